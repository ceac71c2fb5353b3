"""Calibration feeds for ORT's calibrators: checked against the model, then served one at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from edgec.core.errors import CalibrationError
from edgec.core.ir import Feeds
from edgec.runtime.session import make_session, run


class FeedReader(CalibrationDataReader):
    """ORT's CalibrationDataReader over a list of feeds; ``rewind`` makes it reusable.

    ``on_done`` is called once per feed the calibrator has finished with (when it asks for the next one).
    """

    def __init__(self, feeds: Sequence[Feeds], on_done: Callable[[], None] | None = None) -> None:
        self._feeds = list(feeds)
        self._pos = 0
        self._on_done = on_done
        self._done = 0  # feeds reported to ``on_done``: each once, however often the reader is rewound

    def get_next(self) -> Feeds | None:
        """The next feed, or None after the last."""
        if self._on_done is not None and self._done < self._pos:
            self._done += 1
            self._on_done()
        if self._pos >= len(self._feeds):
            return None
        self._pos += 1
        return self._feeds[self._pos - 1]

    def rewind(self) -> None:
        """Start again from the first feed."""
        self._pos = 0


def _graph_inputs(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    initializers = {t.name for t in proto.graph.initializer}
    return {vi.name: vi for vi in proto.graph.input if vi.name not in initializers}


def _check_one(index: int, feed: Feeds, inputs: dict[str, onnx.ValueInfoProto], who: str) -> None:
    for name, vi in inputs.items():
        if not vi.type.HasField("tensor_type"):
            continue  # a sequence or optional input: its elements were checked when the data was loaded
        if name not in feed:
            raise CalibrationError(f"{who}: calibration sample {index} has no input {name!r}; "
                                   f"it has {', '.join(sorted(feed))}")
        arr = feed[name]
        tt = vi.type.tensor_type
        want = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if arr.dtype != want:
            raise CalibrationError(f"{who}: calibration sample {index} input {name!r} has dtype {arr.dtype}, "
                                   f"the model expects {want}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) != arr.ndim or any(d is not None and d != s for d, s in zip(dims, arr.shape, strict=False)):
            raise CalibrationError(f"{who}: calibration sample {index} input {name!r} has shape "
                                   f"{tuple(arr.shape)}, the model expects {tuple(dims)}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise CalibrationError(f"{who}: calibration sample {index} input {name!r} holds NaN or Inf")
    extra = sorted(set(feed) - set(inputs))
    if extra:
        raise CalibrationError(f"{who}: calibration sample {index} has {extra[0]!r}, which is not a model input")


def checked_feeds(proto: onnx.ModelProto, feeds: Sequence[Feeds], samples: int, who: str) -> list[Feeds]:
    """The first ``samples`` feeds, after checking names, dtypes, shapes and finiteness.

    Fewer feeds than asked is an error, not a silent shortfall: calibration ranges from too few
    samples clip real activations.
    """
    if samples < 1:
        raise CalibrationError(f"{who}: samples = {samples}; need at least 1 calibration sample")
    if len(feeds) < samples:
        raise CalibrationError(f"{who}: asked for {samples} calibration samples, got {len(feeds)} "
                               f"(give more with --calib, or lower 'samples' in [pass-options.{who}])")
    chosen = list(feeds[:samples])
    inputs = _graph_inputs(proto)
    for index, feed in enumerate(chosen):
        _check_one(index, feed, inputs, who)
    return chosen


def check_finite_outputs(proto: onnx.ModelProto, feeds: Sequence[Feeds], who: str) -> None:
    """Refuse a sample on which the float model computes NaN or infinity (finite inputs that overflow it).

    Its ranges are no int8 ranges, and no int8 model can match the float one on it: the check after the pass
    would fail on a cosine of 0 without saying why.
    """
    session = make_session(proto.SerializeToString(), level="disabled")
    for index, feed in enumerate(feeds):
        for name, value in run(session, feed).items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                raise CalibrationError(f"{who}: calibration sample {index} makes the float model compute NaN or "
                                       f"infinity in output {name!r}; values far outside the model's range?")
