"""`edgec demo`: a first run that shows the point, on this machine, in about two minutes.

1. The zoo's ResNet-18 (random init, 1x3x224x224) built for android-arm64 with ``cleanup,fuse,quantize-int8``,
   next to ONNX Runtime's own ``quantize_static`` (default settings, the same calibration feeds). fp32, ORT's
   int8 and edgec's int8 are timed together, interleaved (1 thread, this host's CPU). A random-init network
   has no labels, so accuracy is agreement with fp32 on held-out feeds: top-1 agreement and the build's
   centred proxy (Pearson per output).
2. A ``--latency-ratio`` search on the trained MNIST CNN: the target, what the chosen model measured, and
   its held-out MNIST accuracy before and after.
3. Where the ResNet-18 bundle's report page is.

The builds run through the real ``edgec build`` command (``run_cli``), so the demo prints what a user's
own build prints; the comparison table is the demo's own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edgec.compiler.calibration import split_calibration
from edgec.compiler.config import BuildConfig
from edgec.compiler.search.measure import measure_latencies
from edgec.core.agreement import agreement_score
from edgec.core.ir import Feeds
from edgec.models.zoo import get_zoo_model
from edgec.runtime.session import make_session, run

INT8_MODEL = "resnet18"
INT8_TARGET = "android-arm64"
SEARCH_MODEL = "mnist-resnet"
SEARCH_RATIO = 0.6
SEARCH_BUDGET = 8
HELD_OUT = 32  # held-out feeds the int8 models are scored on


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model of the int8 comparison: where it came from, its host latency and its agreement with fp32."""

    label: str
    mb: float
    median_ms: float
    top1_agreement: float
    proxy: float


def _ort_quantize_static(source: pathlib.Path, feeds: Sequence[Feeds], out: pathlib.Path) -> bytes:
    """ORT's ``quantize_static`` with its default settings, as a user would call it first."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> Feeds | None:
            return next(self._feeds, None)

    root = logging.getLogger()  # ORT's quantizer warns on the root logger ("consider pre-processing")
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(source), str(out), Reader())
    finally:
        root.setLevel(level)
    return out.read_bytes()


def _outputs(model: bytes, feeds: list[Feeds]) -> list[dict[str, Any]]:
    session = make_session(model)
    return [run(session, feed) for feed in feeds]


def _agreement(outputs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[float, float]:
    """(top-1 agreement with the reference's first output, centred proxy)."""
    first = next(iter(reference[0]))
    top1 = np.mean([np.argmax(o[first]) == np.argmax(r[first]) for o, r in zip(outputs, reference, strict=True)])
    return float(top1), agreement_score(reference, outputs)


def compare_int8(bundle: pathlib.Path, scratch: pathlib.Path) -> list[Variant]:
    """fp32, ORT's quantize_static and edgec's int8 bundle of the zoo model: size, host latency, agreement."""
    zoo = get_zoo_model(INT8_MODEL)
    source = zoo.onnx_path()
    # edgec fits its ranges on the fit part of the calibration split; ORT gets the same feeds.
    fit = split_calibration(zoo.calibration(BuildConfig.calib_samples)).fit
    models = {"fp32 (original)": source.read_bytes(),
              "ORT quantize_static": _ort_quantize_static(source, fit, scratch / "ort-static.onnx"),
              "edgec int8": _bundle_model(bundle)}
    held_out = zoo.calibration(HELD_OUT, "eval")
    outputs = {label: _outputs(model, held_out) for label, model in models.items()}
    reference = outputs["fp32 (original)"]
    timings = measure_latencies(list(models.values()), held_out[0], min_rounds=8, max_rounds=30)
    variants = []
    for (label, model), timing in zip(models.items(), timings, strict=True):
        top1, proxy = _agreement(outputs[label], reference)
        variants.append(Variant(label, len(model) / 1e6, timing.median_ms, top1, proxy))
    return variants


def _bundle_model(bundle: pathlib.Path) -> bytes:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return (bundle / manifest["model_file"]).read_bytes()


def int8_table(variants: list[Variant]) -> Table:
    """The comparison as a rich table, latency as a ratio to fp32 beside the milliseconds."""
    table = Table(title=f"{INT8_MODEL} int8 for {INT8_TARGET}: host latency (1 thread, interleaved medians) and "
                        f"agreement with fp32 on {HELD_OUT} held-out inputs")
    for column in ("model", "MB", "ms", "vs fp32", "top-1 agreement", "proxy (pearson)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    base = variants[0].median_ms
    for v in variants:
        table.add_row(v.label, f"{v.mb:.1f}", f"{v.median_ms:.2f}", f"{v.median_ms / base:.2f}x",
                      f"{v.top1_agreement:.3f}", f"{v.proxy:.4f}")
    return table


def search_summary(bundle: pathlib.Path) -> str:
    """One line: the ratio asked, the ratio the chosen model measured, and its held-out accuracy."""
    metrics = json.loads((bundle / "manifest.json").read_text())["metrics"]
    ratio = metrics["host_latency_ms"]["ratio"]
    before, after = metrics["accuracy"]["before"], metrics["accuracy"]["after"]
    verdict = "landed" if ratio <= SEARCH_RATIO else "missed (this run; the host is noisy)"
    return (f"target {SEARCH_RATIO:.2f}x of fp32, chosen model measured {ratio:.2f}x: {verdict}; held-out MNIST "
            f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}")


def run_demo(out: pathlib.Path, console: Console, run_cli: Callable[[list[str]], None]) -> None:
    """The three steps, printing as they go; bundles and the report land under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    int8_bundle, search_bundle = out / f"{INT8_MODEL}-int8", out / f"{SEARCH_MODEL}-search"
    steps: list[tuple[str, list[str]]] = [
        (f"1/3  {INT8_MODEL} (random init) in int8 for {INT8_TARGET}, next to ORT's own quantize_static",
         ["build", f"zoo:{INT8_MODEL}", "--target", INT8_TARGET, "--passes", "cleanup,fuse,quantize-int8",
          "-o", str(int8_bundle), "--force"]),
        (f"2/3  a latency search on the trained MNIST CNN: the most accurate model at {SEARCH_RATIO}x of its "
         "latency", ["build", f"zoo:{SEARCH_MODEL}", "--target", "cpu-x86", "--latency-ratio", str(SEARCH_RATIO),
                     "--budget", str(SEARCH_BUDGET), "-o", str(search_bundle), "--force"]),
    ]
    title, args = steps[0]
    _run_step(console, title, args, run_cli)
    console.print("timing fp32, ORT's int8 and edgec's int8 together ...")
    console.print(int8_table(compare_int8(int8_bundle, out)))
    title, args = steps[1]
    _run_step(console, title, args, run_cli)
    console.print(search_summary(search_bundle))
    console.rule("3/3  the report page")
    report = int8_bundle.with_name(int8_bundle.name + ".report.html")
    console.print(f"open {report}" if report.exists() else f"bundles under {out}")


def _run_step(console: Console, title: str, args: list[str], run_cli: Callable[[list[str]], None]) -> None:
    console.rule(title)
    console.print(f"$ edgec {' '.join(args)}", highlight=False)
    run_cli(args)

