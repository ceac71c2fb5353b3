"""Real pretrained models from PyPI wheels (bench/real_models.py), built by edgec: their task figure holds.

The models were exported by others (tf2onnx, Paddle2ONNX, PyTorch 1.9, onnx's dynamic quantizer), and each
is scored by its package's own task on the held-out inputs of bench/real_models_data.py, before and after
the build. Nothing is downloaded here: ``make real-model-wheels`` (a prerequisite of ``make test``) puts
the wheels in ``$EDGEC_CACHE/wheels``, and a test whose wheel is absent skips, naming it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import onnx
import pytest

from edgec.compiler.build import run_build

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import real_models as bench  # noqa: E402  (bench/ is not a package)

# model -> the lowest task figure its original must reach on the held-out inputs (else the data are broken)
FLOORS = {"magika": {"top-1": 0.85}, "rec": {"exact": 0.8, "char-sim": 0.95}, "orientation": {"acc": 0.95},
          "ddddocr": {"exact": 0.9}, "ddddocr-old": {"exact": 0.9}}
LOSSLESS_DROP = 0.01  # cleanup,fuse: at most one held-out input of 100 may change its answer
INT8_DROP = 0.03  # int8 (static or dynamic): at most 3 of 100
# model, pipeline (a bench/real_models.py label), largest drop of every task figure, op that must appear
CASES = [
    ("magika", "cleanup,fuse", LOSSLESS_DROP, None),  # tf2onnx 1.16
    ("magika", "+quantize-dynamic", INT8_DROP, "DynamicQuantizeLinear"),
    ("rec", "cleanup,fuse", LOSSLESS_DROP, None),  # Paddle2ONNX, PP-OCRv4 recognizer (SVTR neck)
    ("orientation", "cleanup,fuse", LOSSLESS_DROP, None),  # Paddle, PP-LCNet
    ("orientation", "+quantize-int8", INT8_DROP, "QuantizeLinear"),
    ("ddddocr", "cleanup,fuse", LOSSLESS_DROP, None),  # PyTorch 1.9 CNN + LSTM
    ("ddddocr-old", "cleanup,fuse", LOSSLESS_DROP, None),  # already int8 by onnx's dynamic quantizer
]


@functools.cache
def prepared(key: str) -> tuple[bench.RealModel, dict[str, Path], bench.data.Task, dict[str, float]]:
    """The model's files (from the cached wheel only), its task and the original's figure; once per worker."""
    (m,) = [m for m in bench.MODELS if m.key == key]
    try:
        files = bench.model_files(m, bench.cache_dir(), download=False)
    except FileNotFoundError as exc:
        pytest.skip(f"{m.package}=={m.version} not available offline: {exc}")
    task = m.task(files)
    return m, files, task, task.score(files["model"].read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize(("key", "pipeline", "max_drop", "must_have"), CASES,
                         ids=[f"{k}-{p.strip('+').replace(',', '-')}" for k, p, _, _ in CASES])
def test_real_model_keeps_its_task_figure(key: str, pipeline: str, max_drop: float, must_have: str | None,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    m, files, task, before = prepared(key)
    for name, floor in FLOORS[key].items():
        assert before[name] >= floor, f"original {m.title}: {name} {before[name]:.3f} < {floor} (task data broken?)"
    work = tmp_path_factory.mktemp(key)
    proto = onnx.load(str(files["model"]), load_external_data=False)
    calib = bench.write_calibration(task.calib, work / "calib.npz")
    cfg = bench.build_config(files["model"], pipeline, calib, work / "out")
    with contextlib.chdir(work):  # ORT's quantization tools leave temp files in the cwd when they fail
        run_build(cfg)
    built = (work / "out" / "model.onnx").read_bytes()
    built_proto = onnx.load_from_string(built)
    if must_have is None:  # cleanup and fuse removed something, or there was nothing to test
        assert bench.count_nodes(built_proto.graph) < bench.count_nodes(proto.graph)
    else:  # the model was quantized, not passed through
        assert must_have in {n.op_type for n in built_proto.graph.node}, f"{pipeline} left no {must_have}"
    after = task.score(built)
    drops = {name: before[name] - after[name] for name in before}
    assert all(d <= max_drop + 1e-9 for d in drops.values()), (
        f"{m.title} {pipeline}: {bench.fmt_metric(before, after)}; allowed drop {max_drop}")
