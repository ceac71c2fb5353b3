"""Run passes one at a time on a copy of the model and check each result before keeping it.

Every pass output must pass the ONNX checker, load in an ORT session, and match its input on
calibration feeds within the tolerance the pass declares. Each pass leaves a PassRecord.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.errors import CalibrationError, ToleranceError, UnsupportedOpError, VerificationError
from edgec.core.ir import Feeds, to_ir, to_proto
from edgec.core.stats import model_stats
from edgec.passes.base import EdgecPass
from edgec.passes.context import BuildContext
from edgec.runtime.session import OutputError, compare_outputs, make_session, run
from edgec.targets.profile import TargetProfile

logger = logging.getLogger(__name__)

# Verification runs the graph as written (no ORT rewrites), so a pass is judged on its own output.
VERIFY_LEVEL = "disabled"
VERIFY_SAMPLES = 8


@dataclasses.dataclass
class PassRecord:
    """What one pass did: figures before/after, time, output error, skips."""

    name: str
    modified: bool
    before: dict[str, int]
    after: dict[str, int]
    wall_s: float
    max_rel_error: float
    min_cosine: float
    errors: list[OutputError]
    stats: dict[str, Any]
    skips: list[dict[str, str]]
    # What the libraries the pass drove said meanwhile (their warnings, log records, prints): kept here
    # instead of on stderr; `edgec -v` shows them on stderr as well.
    library_messages: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        out = dataclasses.asdict(self)
        out["errors"] = [dataclasses.asdict(e) for e in self.errors]
        return out


@dataclasses.dataclass
class PipelineResult:
    """The final model, one record per pass, and both ends' outputs on the verification feeds."""

    model: onnx.ModelProto
    records: list[PassRecord]
    input_outputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def reference_outputs(proto: onnx.ModelProto, feeds: Sequence[Feeds]) -> list[dict[str, Any]]:
    """Outputs of ``proto`` on ``feeds`` at the verification level."""
    session = make_session(proto.SerializeToString(), level=VERIFY_LEVEL)
    return [run(session, f) for f in feeds]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def input_reference(proto: onnx.ModelProto, feeds: Sequence[Feeds], source: str = "calibration",
                    target: TargetProfile | None = None) -> list[dict]:
    """The input model's outputs on ``feeds``; user errors when ORT cannot load it or run those feeds.

    A model that ORT's CPU EP cannot even load has nothing to build on, and neither has one that its
    graph optimizer fails on at the target's level (silero-vad with fixed input dims: ORT folds an If
    and its LSTM's type inference fails). A feed it cannot run (a shape the graph rejects, an index out
    of range) is bad calibration data, and seeded random data often is for inputs that are shapes,
    sizes or indices.
    """
    data = proto.SerializeToString()
    try:
        session = make_session(data, level=VERIFY_LEVEL)
    except Exception as exc:  # noqa: BLE001 - ORT's load errors have several types
        raise UnsupportedOpError(f"ONNX Runtime cannot load the input model: {_first_line(exc)}") from exc
    if target is not None:
        try:
            make_session(data, target)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedOpError(f"ONNX Runtime cannot load the input model at {target.name}'s optimization "
                                     f"level '{target.graph_optimization_level}': {_first_line(exc)}") from exc
    outputs = []
    for i, feed in enumerate(feeds):
        try:
            outputs.append(run(session, feed))
        except Exception as exc:  # noqa: BLE001 - ORT's run errors have several types
            if source == "random":
                raise CalibrationError(f"random data is not a valid input for this model ({_first_line(exc)}); "
                                       "pass real samples with --calib") from exc
            raise CalibrationError(f"{source}: sample {i} is not a valid input for this model "
                                   f"({_first_line(exc)})") from exc
    return outputs


def _subgraph_owners(graph: onnx.GraphProto) -> list[str]:
    owners = []
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            owners.append(f"{node.name or node.op_type} ({node.op_type})")
    return owners


def _check_structure(pass_: EdgecPass[Any], proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise VerificationError(f"pass {pass_.name!r} produced an invalid model: {first}") from exc


# A lossless rewrite of a low-precision graph still rounds differently (constant folding computes in
# float, ORT casts float16 around kernels it lacks): a few units in the last place of the output dtype.
LOW_PRECISION_RTOL = {np.dtype(np.float16): 4e-3, "bfloat16": 3e-2}


def _lossless_rtol(rtol: float, dtype: Any) -> float:
    return max(rtol, LOW_PRECISION_RTOL.get(dtype, LOW_PRECISION_RTOL.get(str(dtype), 0.0)))


def _judge(pass_: EdgecPass[Any], errors: list[OutputError], dtypes: dict[str, Any]) -> None:
    tol = pass_.tolerance
    for err in errors:
        rtol = _lossless_rtol(tol.rtol, dtypes.get(err.name))
        if tol.lossy:
            if tol.min_cosine is not None and err.cosine < tol.min_cosine:
                raise ToleranceError(
                    f"pass {pass_.name!r}: output {err.name!r} cosine {err.cosine:.5f} < {tol.min_cosine}; this "
                    "model is too sensitive for it as configured (keep nodes float, or leave the pass out)")
        elif err.max_rel > rtol:
            raise VerificationError(
                f"pass {pass_.name!r} changed output {err.name!r} by {err.max_rel:.2e} (relative), "
                f"over its tolerance {rtol:.0e}")


# Libraries whose loggers may have handlers of their own (torch's do, and do not propagate).
LIBRARY_LOGGERS = ("onnxscript", "onnx_ir", "onnxruntime", "torch")
MAX_LIBRARY_MESSAGES = 100


class _LibraryMessages(logging.Filter):
    """One pass's library messages; as a handler filter, it passes them on only in verbose mode."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose
        self.messages: list[str] = []
        self.left_out = 0
        self._seen: set[str] = set()

    def add(self, message: str) -> None:
        # A record reaches every handler and a library repeats itself: each message is kept once.
        if message in self._seen:
            return
        self._seen.add(message)
        if len(self.messages) < MAX_LIBRARY_MESSAGES:
            self.messages.append(message)
        else:
            self.left_out += 1

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep a library's record of WARNING and above; edgec's own records pass untouched."""
        if record.name == "edgec" or record.name.startswith("edgec."):
            return True
        if record.levelno >= logging.WARNING:
            self.add(f"{record.levelname} {record.name}: {record.getMessage()}")
        return self.verbose


@contextlib.contextmanager
def library_messages() -> Iterator[list[str]]:
    """Collect what libraries say while the block runs: Python warnings, log records, prints to stdout.

    Log records of WARNING and above from any logger but edgec's, warnings and printed lines go to the list
    yielded, and stay off stderr and stdout unless edgec logs at INFO (``edgec -v``), which shows them as
    before. edgec itself never prints, so every printed line is a library's.
    """
    root = logging.getLogger()
    keeper = _LibraryMessages(verbose=root.isEnabledFor(logging.INFO))
    # With no handler on the root logger, a module-level logging.warning() (ORT's quantizer) would add an
    # unfiltered stderr one: logging's last-resort handler stands in for the block, filtered.
    stand_in = logging.lastResort if not root.handlers and logging.lastResort is not None else None
    if stand_in is not None:
        root.addHandler(stand_in)
    handlers = {*root.handlers, *(h for name in LIBRARY_LOGGERS for h in logging.getLogger(name).handlers)}
    for handler in handlers:
        handler.addFilter(keeper)
    show = warnings.showwarning
    outer, printed = sys.stdout, io.StringIO()

    def keep_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        keeper.add(f"{category.__name__}: {message} ({filename.rsplit('/', 1)[-1]}:{lineno})")
        if keeper.verbose:
            show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.showwarning = keep_warning
            yield keeper.messages
    finally:
        for handler in handlers:
            handler.removeFilter(keeper)
        if stand_in is not None:
            root.removeHandler(stand_in)
        for line in printed.getvalue().splitlines():
            if line.strip():
                keeper.add(f"stdout: {line.strip()}")
        if keeper.verbose and printed.getvalue():
            outer.write(printed.getvalue())
        if keeper.left_out:
            keeper.messages.append(f"({keeper.left_out} more library messages left out)")


def _apply(pass_: EdgecPass[Any], model: ir.Model) -> ir.passes.PassResult:
    """onnx_ir's pass call (requires, call, ensures) without EdgecPass.__call__'s quiet_library_logs.

    That wrapper drops the libraries' messages; the pipeline keeps them in the pass's record instead.
    """
    return ir.passes.InPlacePass.__call__(pass_, model)


def run_pass(pass_: EdgecPass[Any], proto: onnx.ModelProto, reference: list[dict[str, Any]],
             ctx: BuildContext) -> tuple[onnx.ModelProto, list[dict[str, Any]], PassRecord]:
    """Apply one pass to a copy of ``proto`` and verify it; return the new model, outputs, record."""
    feeds = ctx.calibration[:VERIFY_SAMPLES]
    skips_before = len(ctx.report.skips)
    if not pass_.handles_subgraphs:
        for owner in _subgraph_owners(proto.graph):
            ctx.report.skip(pass_.name, owner, "pass rewrites the main graph only; subgraph left as is")
    start = time.perf_counter()
    try:
        with library_messages() as messages:
            result = _apply(pass_, to_ir(proto))
    except ir.passes.PreconditionError as exc:
        raise UnsupportedOpError(f"pass {pass_.name!r} cannot handle this model: {exc}") from exc
    new_proto = to_proto(result.model)
    wall_s = time.perf_counter() - start
    _check_structure(pass_, new_proto)
    try:
        outputs = reference_outputs(new_proto, feeds)
    except Exception as exc:  # noqa: BLE001 - any ORT failure on a pass's output is that pass's bug
        raise VerificationError(f"pass {pass_.name!r}: ORT cannot run its output: {exc}") from exc
    errors = compare_outputs(reference, outputs) if feeds else []
    # FLOPs at the first sample's shapes: with symbolic dims the declared shapes would give none. Sequence
    # inputs (lists) and absent optionals (None) have no tensor shape to give.
    sample_shapes = {k: tuple(np.shape(v)) for k, v in feeds[0].items()
                     if v is not None and not isinstance(v, list | tuple)} if feeds else None
    _judge(pass_, errors, {k: getattr(v, "dtype", None) for k, v in reference[0].items()} if reference else {})
    record = PassRecord(
        name=pass_.name,
        modified=result.modified,
        before=model_stats(proto, sample_shapes).summary(),
        after=model_stats(new_proto, sample_shapes).summary(),
        wall_s=wall_s,
        max_rel_error=max((e.max_rel for e in errors), default=0.0),
        min_cosine=min((e.cosine for e in errors), default=1.0),
        errors=errors,
        stats=ctx.report.stats.get(pass_.name, {}),
        skips=[dataclasses.asdict(s) for s in ctx.report.skips[skips_before:]],
        library_messages=messages,
    )
    return new_proto, outputs, record


def run_pipeline(proto: onnx.ModelProto, passes: Sequence[EdgecPass[Any]], ctx: BuildContext,
                 on_pass: Callable[[str], None] | None = None,
                 on_model: Callable[[str, onnx.ModelProto], None] | None = None,
                 reference: list[dict[str, Any]] | None = None) -> PipelineResult:
    """Run ``passes`` in order, each on a copy of the previous result, verifying each.

    ``on_pass`` hears each pass's name before it runs; ``on_model`` gets its name and verified output
    after (the pipeline's own proto: a caller that keeps it must copy or serialize it). ``reference``:
    ``proto``'s outputs on the first VERIFY_SAMPLES calibration feeds, when the caller has them already.
    """
    if reference is None:
        reference = input_reference(proto, ctx.calibration[:VERIFY_SAMPLES], ctx.calibration_source)
    first = reference
    records = []
    for pass_ in passes:
        logger.info("pass %s", pass_.name)
        if on_pass:
            on_pass(pass_.name)
        proto, reference, record = run_pass(pass_, proto, reference, ctx)
        records.append(record)
        if on_model:
            on_model(pass_.name, proto)
    return PipelineResult(proto, records, first, reference)
