"""Browser check: a bundle's model.onnx and model.ort in onnxruntime-web (WASM) in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from edgec.runtime.bundle import write_bundle
from edgec.runtime.loader import load_bundle
from edgec.runtime.session import make_session, run
from edgec.targets.registry import get_target

HERE = pathlib.Path(__file__).parent
RUNNER = HERE / "web_run.js"
MODULES = HERE / "node_modules"
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# WASM kernels differ from native MLAS in the last bits (1.5e-8 measured in /work/shared/runtimes.md).
ATOL = 1e-6
ZOO_RTOL = 1e-4  # relative to the output's max |value|, for the zoo's deeper graphs

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed; the browser check needs Node.js"),
    pytest.mark.skipif(not (MODULES / "onnxruntime-web").is_dir() or not (MODULES / "playwright-core").is_dir(),
                       reason="onnxruntime-web/playwright-core not installed; run `make node-deps` (needs npm)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium; apt-get install -y chromium"),
]


def _tiny_classifier():
    spec = importlib.util.spec_from_file_location("edgec_tests_runtime_models", HERE.parent / "runtime" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_classifier()


def run_in_browser(model: pathlib.Path, feeds: dict[str, np.ndarray], work: pathlib.Path) -> dict[str, np.ndarray]:
    """Outputs of ``model`` run once in onnxruntime-web at 'extended' inside headless Chromium."""
    work.mkdir()
    inputs = []
    for i, (name, array) in enumerate(feeds.items()):
        file = work / f"input_{i}.bin"
        file.write_bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        inputs.append({"name": name, "dtype": array.dtype.name, "dims": list(array.shape), "file": str(file)})
    spec = work / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "level": "extended", "inputs": inputs, "out_dir": str(work)}))
    proc = subprocess.run([NODE, str(RUNNER), str(spec)], capture_output=True, text=True, timeout=180,
                          check=False, env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = {}
    for out in json.loads((work / "outputs.json").read_text()):
        data = np.frombuffer(pathlib.Path(out["file"]).read_bytes(), dtype=np.dtype(out["dtype"]).newbyteorder("<"))
        outputs[out["name"]] = data.reshape(out["dims"])
    return outputs


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory):
    feeds = {"input.1": np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    out = tmp_path_factory.mktemp("web") / "bundle"
    return write_bundle(out, model=_tiny_classifier(), target=get_target("android-arm64"), sample_inputs=feeds)


def test_browser_matches_python_ort(android_bundle, tmp_path):
    bundle = load_bundle(android_bundle)
    for model_file in ("model.onnx", "model.ort"):
        expected = run(make_session(android_bundle / model_file, level="extended"), bundle.sample_inputs)
        got = run_in_browser(android_bundle / model_file, bundle.sample_inputs, tmp_path / model_file)
        assert set(got) == {"probs"} and got["probs"].dtype == np.float32
        np.testing.assert_allclose(got["probs"], expected["probs"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got["probs"], bundle.sample_outputs["probs"], atol=ATOL, rtol=0)


@pytest.mark.skipif(not os.environ.get("EDGEC_CROSSRUNTIME_ZOO"), reason="zoo models in the browser take ~1 min; "
                    "set EDGEC_CROSSRUNTIME_ZOO=1 to run them")
@pytest.mark.parametrize("name", ["mobilenetv2", "bert-like"])
def test_browser_runs_zoo_bundles(name, tmp_path):
    import onnx

    from edgec.models.zoo import get_zoo_model

    zoo = get_zoo_model(name)
    bundle_path = write_bundle(tmp_path / "bundle", model=onnx.load(zoo.onnx_path()),
                               target=get_target("android-arm64"), sample_inputs=zoo.calibration(1, "calib")[0])
    bundle = load_bundle(bundle_path)
    got = run_in_browser(bundle_path / "model.ort", bundle.sample_inputs, tmp_path / "web")
    for out_name, ref in bundle.sample_outputs.items():
        err = float(np.abs(got[out_name].astype(np.float64) - ref).max())
        scale = float(np.abs(ref).max())
        print(f"{name} {out_name}: max abs {err:.3g}, max rel {err / scale:.3g}")  # noqa: T201
        assert err <= ZOO_RTOL * scale
