"""onnxruntime-node on the zoo's android-arm64 bundles (the arm64 and browser checks' bundles), opt-in."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from edgec.runtime.bundle import write_bundle
from edgec.runtime.loader import load_bundle
from edgec.targets.registry import get_target

HERE = pathlib.Path(__file__).parent
NODE = shutil.which("node")
RTOL = 1e-4  # relative to each output's max |value|; node 1.30 against Python 1.32

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(not (HERE / "node_modules" / "onnxruntime-node").is_dir(),
                       reason="onnxruntime-node is not installed; run `make node-deps`"),
    pytest.mark.skipif(not os.environ.get("EDGEC_CROSSRUNTIME_ZOO"),
                       reason="zoo bundles take ~30 s; set EDGEC_CROSSRUNTIME_ZOO=1 to run them"),
]


@pytest.mark.parametrize("name", ["mobilenetv2", "bert-like"])
def test_node_runs_zoo_bundles(name, tmp_path):
    from edgec.models.zoo import get_zoo_model

    zoo = get_zoo_model(name)
    path = write_bundle(tmp_path / "bundle", model=onnx.load(zoo.onnx_path()), target=get_target("android-arm64"),
                        sample_inputs=zoo.calibration(1, "calib")[0])
    bundle = load_bundle(path)
    inputs = []
    for i, (input_name, array) in enumerate(bundle.sample_inputs.items()):
        file = tmp_path / f"input_{i}.bin"
        file.write_bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        inputs.append({"name": input_name, "dtype": array.dtype.name, "dims": list(array.shape), "file": str(file)})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(path / "model.ort"), "level": "extended", "inputs": inputs,
                                "out_dir": str(tmp_path)}))
    proc = subprocess.run([NODE, str(HERE / "run_bundle.js"), str(spec)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for out in json.loads((tmp_path / "outputs.json").read_text()):
        got = np.frombuffer(pathlib.Path(out["file"]).read_bytes(), dtype=np.dtype(out["dtype"]).newbyteorder("<"))
        ref = bundle.sample_outputs[out["name"]]
        err = float(np.abs(got.reshape(out["dims"]).astype(np.float64) - ref).max())
        print(f"node {name} {out['name']}: max abs {err:.3g}, max rel {err / float(np.abs(ref).max()):.3g}")  # noqa: T201
        assert err <= RTOL * float(np.abs(ref).max())
