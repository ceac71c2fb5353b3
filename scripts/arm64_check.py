"""arm64 parity: android-arm64 bundles' model.ort run in an emulated arm64 root, compared with the host.

Called by scripts/arm64_check.sh (which prepares the root and mounts /proc); see there for usage.
Bundles: each zoo model in fp32, and in int8 (ORT's static QDQ quantizer, per-channel, calibrated on the
zoo's own calibration data). The arm64 side runs edgec's standalone device_runner.py under qemu.
"""

# ruff: noqa: T201  (a script: its report is its output)
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import onnx

from edgec.runtime.bundle import write_bundle
from edgec.runtime.devices._jobs import INPUTS_FILE, decode_array, parse_runner_output, runner_command, write_job
from edgec.runtime.loader import load_bundle
from edgec.runtime.session import compare_outputs
from edgec.targets.registry import get_target

# Different CPUs are not bit-exact (FMA order, NEON vs AVX kernels): fp32 within 1e-4 of max |output|;
# int8 may round one quantization step differently at ties, so it gets a cosine floor instead.
FP32_MAX_REL = 1e-4
INT8_MIN_COSINE = 0.999


def _int8(model_path: pathlib.Path, feeds: list[dict], work: pathlib.Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out = work / f"{model_path.parent.name}-int8.onnx"
    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return onnx.load(out)


def build_bundles(names: list[str], out: pathlib.Path) -> dict[str, pathlib.Path]:
    """{label: bundle path} for each model in fp32 and int8, android-arm64 (model.ort shipped)."""
    from edgec.models.zoo import get_zoo_model

    target, bundles = get_target("android-arm64"), {}
    with tempfile.TemporaryDirectory(prefix="edgec-q-") as tmp:
        for name in names:
            zoo = get_zoo_model(name)
            sample = zoo.calibration(1, "calib")[0]
            fp32 = onnx.load(zoo.onnx_path())
            int8 = _int8(zoo.onnx_path(), zoo.calibration(8, "calib"), pathlib.Path(tmp))
            # The writer ships QDQ (int8) models Fixed-style: see runtime.mobile.ort_style_for.
            for precision, model in (("fp32", fp32), ("int8", int8)):
                label = f"{name}-{precision}"
                bundles[label] = write_bundle(out / label, model=model, target=target, sample_inputs=sample,
                                              force=True)
    return bundles


def run_in_root(root: pathlib.Path, bundles: dict[str, pathlib.Path]) -> dict:
    """One runner job in the arm64 root holding every bundle's model.ort and sample inputs."""
    tasks, inputs, files = [], {}, {}
    for label, path in bundles.items():
        bundle = load_bundle(path)
        files[f"{label}.ort"] = bundle.model_bytes()
        inputs.update({f"{label}/{k}": v for k, v in bundle.sample_inputs.items()})
        tasks.append({"id": label, "model": f"{label}.ort", "inputs": INPUTS_FILE, "runs": 0, "warmup": 0,
                      "threads": 1, "level": bundle.manifest["session_options"]["graph_optimization_level"],
                      "providers": [], "profile_runs": 0, "return_outputs": True})
    job_dir = pathlib.Path(tempfile.mkdtemp(prefix="edgec-", dir=root / "tmp"))
    try:
        write_job(job_dir, tasks, inputs, files, deadline_s=3000)
        inner = runner_command(f"/tmp/{job_dir.name}", "/opt/venv/bin/python")
        proc = subprocess.run(["chroot", str(root), "/bin/sh", "-c", inner], capture_output=True, text=True,
                              timeout=3300, check=False)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    return parse_runner_output("qemu-arm64", "/opt/venv/bin/python", proc)


def compare(bundles: dict[str, pathlib.Path], raw: dict) -> list[dict]:
    rows = []
    for result in raw["results"]:
        label = result["id"]
        if not result.get("ok"):
            rows.append({"bundle": label, "ok": False, "error": result.get("error")})
            continue
        host = load_bundle(bundles[label]).sample_outputs  # model.ort's outputs on the host
        got = {k: decode_array(v) for k, v in result["outputs"].items()}
        for err in compare_outputs([host], [{k: got[k] for k in host}]):
            ok = err.max_rel <= FP32_MAX_REL if label.endswith("fp32") else err.cosine >= INT8_MIN_COSINE
            rows.append({"bundle": label, "output": err.name, "max_abs": err.max_abs, "max_rel": err.max_rel,
                         "cosine": err.cosine, "ok": bool(ok)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bundles = build_bundles(args.models, args.out / "bundles")
    built = time.perf_counter()
    raw = run_in_root(args.root, bundles)
    rows = compare(bundles, raw)
    summary = {"arm64_environment": raw["environment"], "rows": rows, "build_s": built - start,
               "arm64_run_s": time.perf_counter() - built, "fp32_max_rel": FP32_MAX_REL,
               "int8_min_cosine": INT8_MIN_COSINE}
    (args.out / "arm64_check.json").write_text(json.dumps(summary, indent=1))
    for row in rows:
        if "output" in row:
            print(f"{row['bundle']:24s} {row['output']:14s} max_abs {row['max_abs']:.3g}  max_rel "
                  f"{row['max_rel']:.3g}  cosine {row['cosine']:.7f}  {'ok' if row['ok'] else 'FAIL'}")
        else:
            print(f"{row['bundle']:24s} FAILED on arm64: {row['error']}")
    print(f"arm64: onnxruntime {raw['environment']['onnxruntime_version']} on {raw['environment']['machine']}; "
          f"build {summary['build_s']:.0f} s, emulated run {summary['arm64_run_s']:.0f} s")
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
