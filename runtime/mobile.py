"""ORT Mobile side of a bundle: .onnx to .ort conversion and the Kotlin/Swift loader samples for apps."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

import onnx

from edgec.core.errors import BundleError
from edgec.targets.profile import TargetProfile

log = logging.getLogger(__name__)

ORT_FILE = "model.ort"
OPS_CONFIG_FILE = "required_operators.config"

# Loader-sample kinds: template file and the file name it gets in the bundle.
SAMPLES = {
    "android": ("EdgecModel.kt.tmpl", "EdgecModel.kt"),
    "ios": ("EdgecModel.swift.tmpl", "EdgecModel.swift"),
}

_KOTLIN_LEVELS = {"disabled": "NO_OPT", "basic": "BASIC_OPT", "extended": "EXTENDED_OPT", "all": "ALL_OPT"}
_SWIFT_LEVELS = {"disabled": "none", "basic": "basic", "extended": "extended", "all": "all"}
# numpy dtype -> (Kotlin array type, buffer wrap, OnnxTensor output accessor)
_KOTLIN_TYPES = {
    "float32": ("FloatArray", "FloatBuffer.wrap({v})", "floatBuffer"),
    "int64": ("LongArray", "LongBuffer.wrap({v})", "longBuffer"),
    "int32": ("IntArray", "IntBuffer.wrap({v})", "intBuffer"),
    "uint8": ("ByteArray", "ByteBuffer.wrap({v}), {shape}, OnnxJavaType.UINT8", "byteBuffer"),
    "int8": ("ByteArray", "ByteBuffer.wrap({v}), {shape}, OnnxJavaType.INT8", "byteBuffer"),
}
# numpy dtype -> (Swift element type, ORTTensorElementDataType case)
_SWIFT_TYPES = {
    "float32": ("Float", "float"),
    "int64": ("Int64", "int64"),
    "int32": ("Int32", "int32"),
    "uint8": ("UInt8", "uInt8"),
    "int8": ("Int8", "int8"),
}


@contextlib.contextmanager
def _quiet_converter() -> Iterator[io.StringIO]:
    """The converter prints progress and logs at INFO; keep both out of the user's terminal."""
    noisy = logging.getLogger("ort_format_model.utils")
    old_level = noisy.level
    noisy.setLevel(logging.WARNING)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield captured
    finally:
        noisy.setLevel(old_level)
        log.debug("ORT converter output:\n%s", captured.getvalue())


_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def ort_style_for(model: onnx.ModelProto, target: TargetProfile) -> str:
    """The target's .ort optimization style, except Fixed for QDQ models.

    ORT 1.32 cannot replay the saved runtime optimizations it records for QDQ graphs ("Not enough
    produced nodes in the runtime optimization record"), and app loaders replay them, so quantized
    models ship with their fusions fixed at conversion time.
    """
    if target.ort_optimization_style == "Runtime" and any(n.op_type in _QDQ_OPS for n in model.graph.node):
        return "Fixed"
    return target.ort_optimization_style


def convert_to_ort(onnx_path: pathlib.Path, out_dir: pathlib.Path, target: TargetProfile,
                   style_name: str | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``model.ort`` and ``required_operators.config`` for ``target`` into ``out_dir``.

    Uses ORT's own converter with ``style_name`` (default: the target's style; Fixed for CPU-EP
    bundles, Runtime for NNAPI/CoreML) and platform (``arm`` leaves out the x86-only NCHWc transform).
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    style_name = style_name or target.ort_optimization_style
    try:
        style = OptimizationStyle[style_name]
    except KeyError:
        raise BundleError(f"target {target.name}: ort_optimization_style must be Fixed or Runtime, "
                          f"not {style_name!r}") from None
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=".ort-", dir=out_dir))
    try:
        with _quiet_converter():
            convert_onnx_models_to_ort(onnx_path, output_dir=scratch, optimization_styles=[style],
                                       target_platform=target.ort_target_platform or None)
        ort_files = sorted(scratch.glob("*.ort"))
        configs = sorted(scratch.glob("*.config"))
        if len(ort_files) != 1 or len(configs) != 1:
            raise BundleError(f"{onnx_path}: ORT converter wrote {[p.name for p in scratch.iterdir()]}, "
                              "expected one .ort and one .config")
        ort_path, config_path = out_dir / ORT_FILE, out_dir / OPS_CONFIG_FILE
        ort_files[0].replace(ort_path)
        # The converter's header names its scratch path on the build host; name the bundle file instead.
        lines = configs[0].read_text(encoding="utf-8").splitlines()
        lines = [f"# - {ORT_FILE}" if line.startswith("# - ") else line for line in lines]
        config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except (BundleError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise BundleError(f"{onnx_path}: conversion to ORT format failed: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ort_path, config_path


def _identifiers(names: Sequence[str]) -> list[str]:
    """Valid, unique Kotlin/Swift identifiers for ONNX value names such as ``input.1``."""
    seen: set[str] = set()
    out = []
    for name in names:
        ident = re.sub(r"\W", "_", name) or "value"
        if ident[0].isdigit():
            ident = "v" + ident
        base, n = ident, 1
        while ident in seen:
            n += 1
            ident = f"{base}_{n}"
        seen.add(ident)
        out.append(ident)
    return out


def _literal(name: str) -> str:
    """A double-quoted string literal valid in both Kotlin and Swift (``$`` starts a Kotlin template)."""
    return json.dumps(name).replace("$", "\\$")


def _dims(shape: Sequence[int | str | None] | None) -> str:
    """A declared shape for a comment: ``[N, 3, 16, 16]``, ``?`` for unknown dims or rank."""
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_dtypes(kind: str, specs: Sequence[dict[str, Any]], table: dict[str, Any]) -> None:
    for spec in specs:
        if spec["dtype"] not in table:
            raise BundleError(f"{kind} loader sample: {spec['name']!r} has dtype {spec['dtype']}, "
                              f"supported: {', '.join(table)}")


def _kotlin_parts(inputs: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]]) -> dict[str, str]:
    _check_dtypes("android", [*inputs, *outputs], _KOTLIN_TYPES)
    in_ids, out_ids = _identifiers([i["name"] for i in inputs]), _identifiers([o["name"] for o in outputs])
    consts, params, tensors, values = [], [], [], []
    for ident, spec in zip(in_ids, inputs, strict=True):
        upper = ident.upper()
        consts.append(f"        const val INPUT_{upper} = {_literal(spec['name'])}")
        dims = ", ".join(f"{d}L" for d in spec["sample_shape"])
        consts.append(f"        /** Declared {_dims(spec['shape'])}; symbolic dims as in sample.npz. */")
        consts.append(f"        val SHAPE_{upper} = longArrayOf({dims})")
        array_type, wrap, _ = _KOTLIN_TYPES[spec["dtype"]]
        params.append(f"{ident}: {array_type}")
        buffer = wrap.format(v=ident, shape=f"SHAPE_{upper}")
        if "OnnxJavaType" not in buffer:
            buffer += f", SHAPE_{upper}"
        tensors.append(f"            INPUT_{upper} to OnnxTensor.createTensor(env, {buffer}),")
    for ident, spec in zip(out_ids, outputs, strict=True):
        consts.append(f"        const val OUTPUT_{ident.upper()} = {_literal(spec['name'])}")
        array_type, _, accessor = _KOTLIN_TYPES[spec["dtype"]]
        name = f"OUTPUT_{ident.upper()}"
        copy = f"{array_type}(buf.remaining()).also {{ buf.get(it) }}"
        values.append(f"                    {name} to (result.get({name}).get() as OnnxTensor).{accessor}\n"
                      f"                        .let {{ buf -> {copy} }},")
    return {"CONSTANTS": "\n".join(consts), "RUN_PARAMS": ", ".join(params),
            "INPUT_TENSORS": "\n".join(tensors), "OUTPUT_VALUES": "\n".join(values)}


def _swift_parts(inputs: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]]) -> dict[str, str]:
    _check_dtypes("ios", inputs, _SWIFT_TYPES)
    in_ids = _identifiers([i["name"] for i in inputs])
    consts, params, tensors = [], [], []
    for ident, spec in zip(in_ids, inputs, strict=True):
        swift_type, element = _SWIFT_TYPES[spec["dtype"]]
        dims = ", ".join(str(d) for d in spec["sample_shape"])
        declared = f"declared shape {_dims(spec['shape'])}, {spec['dtype']}"
        consts.append(f"    /// Input {_literal(spec['name'])}: {declared}.")
        consts.append(f"    static let shape_{ident}: [NSNumber] = [{dims}]")
        params.append(f"{ident}: [{swift_type}]")
        tensors.append(f"            {_literal(spec['name'])}: try EdgecModel.tensor({ident}, .{element}, "
                       f"EdgecModel.shape_{ident}),")
    names = ", ".join(_literal(o["name"]) for o in outputs)
    consts.append(f"    static let outputNames: [String] = [{names}]")
    return {"CONSTANTS": "\n".join(consts), "RUN_PARAMS": ", ".join(params),
            "INPUT_TENSORS": "\n".join(tensors), "OUTPUT_NAME_SET": "Set(EdgecModel.outputNames)"}


def render_loader_sample(target: TargetProfile, model_file: str, inputs: Sequence[dict[str, Any]],
                         outputs: Sequence[dict[str, Any]], versions: dict[str, str]) -> tuple[str, str]:
    """(file name, source) of the app loader sample for ``target.loader_sample``.

    ``inputs`` and ``outputs`` are manifest entries (name, shape, dtype); inputs also carry
    ``sample_shape``, the concrete shape of the stored sample, used where the declared shape is symbolic.
    """
    kind = target.loader_sample
    if kind not in SAMPLES:
        raise BundleError(f"target {target.name}: unknown loader_sample {kind!r}; "
                          f"known: {', '.join(SAMPLES)}")
    template_name, file_name = SAMPLES[kind]
    text = (resources.files("edgec.runtime") / "templates" / template_name).read_text(encoding="utf-8")
    level = target.graph_optimization_level
    if kind == "android":
        parts = _kotlin_parts(inputs, outputs) | {"OPT_LEVEL": _KOTLIN_LEVELS[level]}
    else:
        # ML Program is the newer CoreML format; the profile's op table says which one it targets.
        ml_program = any(ep.ops_source == "coreml-mlprogram-table" for ep in target.execution_providers)
        parts = _swift_parts(inputs, outputs) | {"OPT_LEVEL": _SWIFT_LEVELS[level],
                                                 "COREML_ML_PROGRAM": str(ml_program).lower()}
    stem, _, ext = model_file.rpartition(".")
    parts |= {"EDGEC_VERSION": versions["edgec"], "ORT_VERSION": versions["onnxruntime"],
              "TARGET": target.name,
              "MODEL_FILE": model_file, "MODEL_STEM": stem, "MODEL_EXT": ext,
              "THREADS": str(target.intra_op_num_threads)}
    for key, value in parts.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise BundleError(f"templates/{template_name}: no value for {left[0]}")
    return file_name, text
