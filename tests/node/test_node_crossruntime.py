"""Cross-runtime check: a bundle's model.onnx and model.ort give the same outputs in onnxruntime-node."""

from __future__ import annotations

import importlib.util
import json
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
RUNNER = HERE / "run_bundle.js"
PACKAGE = HERE / "node_modules" / "onnxruntime-node"
# Node 1.30 and Python 1.32 ran bit-exact at the same level in /work/shared/runtimes.md; allow a hair.
ATOL = 1e-6



def _tiny_classifier():
    """The runtime tests' model builder, loaded by path so no conftest module name is shadowed."""
    path = HERE.parent / "runtime" / "conftest.py"
    spec = importlib.util.spec_from_file_location("edgec_tests_runtime_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_classifier()


NODE = shutil.which("node")
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed; the cross-runtime check needs Node.js"),
    pytest.mark.skipif(not PACKAGE.is_dir(),
                       reason="onnxruntime-node is not installed; run `make node-deps` (needs npm)"),
]


def _run_in_node(model: pathlib.Path, feeds: dict[str, np.ndarray],
                 work: pathlib.Path) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime-node at 'extended' on raw little-endian input files."""
    work.mkdir()
    inputs = []
    for i, (name, array) in enumerate(feeds.items()):
        file = work / f"input_{i}.bin"
        file.write_bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        inputs.append({"name": name, "dtype": array.dtype.name, "dims": list(array.shape), "file": str(file)})
    spec = work / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "level": "extended", "inputs": inputs,
                                "out_dir": str(work)}))
    proc = subprocess.run([NODE, str(RUNNER), str(spec)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    outputs = {}
    for out in json.loads((work / "outputs.json").read_text()):
        dtype = np.dtype(out["dtype"]).newbyteorder("<")
        data = np.frombuffer(pathlib.Path(out["file"]).read_bytes(), dtype=dtype)
        outputs[out["name"]] = data.reshape(out["dims"])
    return outputs


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory):
    feeds = {"input.1": np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    out = tmp_path_factory.mktemp("node") / "bundle"
    return write_bundle(out, model=_tiny_classifier(), target=get_target("android-arm64"),
                        sample_inputs=feeds)


@pytest.mark.parametrize("model_file", ["model.onnx", "model.ort"])
def test_node_matches_python_ort(android_bundle, tmp_path, model_file):
    bundle = load_bundle(android_bundle)
    feeds = bundle.sample_inputs
    expected = run(make_session(android_bundle / model_file, level="extended"), feeds)
    got = _run_in_node(android_bundle / model_file, feeds, tmp_path / "node")
    assert set(got) == set(expected) == {"probs"}
    for name, ref in expected.items():
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype
        np.testing.assert_allclose(got[name], ref, atol=ATOL, rtol=0)
    # Both also match the outputs the bundle shipped (computed from model.ort when it was written).
    np.testing.assert_allclose(got["probs"], bundle.sample_outputs["probs"], atol=ATOL, rtol=0)
    assert np.allclose(got["probs"].sum(axis=1), 1.0, atol=1e-5)
