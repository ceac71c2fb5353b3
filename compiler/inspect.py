"""What `edgec inspect` and `edgec profile` compute for a model file or a bundle."""

from __future__ import annotations

import collections
import dataclasses
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgec.compiler.blocks_report import list_blocks
from edgec.compiler.calibration import load_calibration
from edgec.compiler.frontend import load_model, parse_input_shapes
from edgec.core.stats import model_stats
from edgec.targets.registry import get_target
from edgec.targets.support import place_nodes

DEFAULT_TARGET = "cpu-x86"


def is_bundle(path: Path) -> bool:
    """A bundle is a folder or a zip with a manifest.json at its root."""
    if path.is_dir():
        return (path / "manifest.json").is_file()
    return path.is_file() and zipfile.is_zipfile(path) and "manifest.json" in zipfile.ZipFile(path).namelist()


def _io_info(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    info = []
    for vi in values:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        info.append({"name": vi.name, "dtype": onnx.TensorProto.DataType.Name(tt.elem_type).lower(), "shape": dims})
    return info


def describe_model(proto: onnx.ModelProto, target_name: str) -> dict[str, Any]:
    """Opset, I/O, op histogram, params, FLOPs per node and EP placement on ``target_name``."""
    target = get_target(target_name)
    stats = model_stats(proto)
    placements = place_nodes(proto, target)
    by_ep = collections.Counter(p.provider or "none" for p in placements)
    initializer_names = {t.name for t in proto.graph.initializer}
    return {
        "opset": {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import},
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": _io_info([i for i in proto.graph.input if i.name not in initializer_names]),
        "outputs": _io_info(proto.graph.output),
        "nodes": stats.nodes,
        "params": stats.params,
        "size_bytes": stats.size_bytes,
        "flops": stats.flops,
        "op_histogram": stats.op_histogram,
        "node_flops": [dataclasses.asdict(c) for c in sorted(stats.node_costs, key=lambda c: -c.flops)],
        "target": target.name,
        "nodes_per_provider": dict(by_ep),
        "unsupported": [dataclasses.asdict(p) for p in placements if p.provider is None],
        "fallback": [dataclasses.asdict(p) for p in placements
                     if p.provider not in (None, target.ep_names[0])],
        "blocks": list_blocks(proto),
    }


def inspect_source(source: str, target: str | None, input_shapes: Sequence[str],
                   task: str | None = None) -> dict[str, Any]:
    """Describe a model (any frontend source) or the model.onnx inside a bundle."""
    path = Path(source)
    if is_bundle(path):
        from edgec.runtime.loader import load_bundle

        bundle = load_bundle(path)  # verifies checksums and paths before anything is parsed
        proto, manifest = onnx.load_from_string(bundle.model_bytes("model.onnx")), bundle.manifest
        info = describe_model(proto, target or manifest["target"]["name"])
        info["bundle"] = {"path": str(path), "schema_version": manifest["schema_version"]}
        return info
    loaded = load_model(source, parse_input_shapes(input_shapes) or None, task=task)
    info = describe_model(loaded.proto, target or DEFAULT_TARGET)
    info["notes"] = loaded.notes
    return info


def profile_source(source: str, *, runs: int, warmup: int, threads: int,
                   input_shapes: Sequence[str], task: str | None = None) -> dict[str, Any]:
    """Profile a bundle on its stored sample, or a model on seeded random inputs."""
    from edgec.runtime.profile import profile_model

    path = Path(source)
    if is_bundle(path):
        from edgec.runtime.loader import load_bundle

        bundle = load_bundle(path)
        feeds: dict[str, np.ndarray] = bundle.sample_inputs
        level = bundle.manifest["session_options"]["graph_optimization_level"]
        result = profile_model(bundle.model_bytes(), feeds, runs=runs, warmup=warmup, threads=threads, level=level)
        origin = f"bundle {path} ({bundle.manifest['model_file']}, stored sample input)"
    else:
        loaded = load_model(source, parse_input_shapes(input_shapes) or None, task=task)
        feeds = load_calibration("random", loaded.proto, n=1).feeds[0]
        result = profile_model(loaded.proto.SerializeToString(), feeds, runs=runs, warmup=warmup, threads=threads)
        origin = f"{source} (seeded random input)"
    out = dataclasses.asdict(result)
    out["source"] = origin
    return out
