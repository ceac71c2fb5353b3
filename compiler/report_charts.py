"""The report page's charts as inline PNG data URIs, drawn by the same code as the PNGs a build writes.

Sensitivity ranking and per-node precision (``passes.quant``), the Pareto front and the per-layer widths
(``compiler.search``), from the figures in the manifest. Names come from the manifest: matplotlib would read
``$...$`` in them as math, so dollar signs are escaped first.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgec.compiler.search.objective import Evaluation


def _label(value: Any) -> str:
    """A manifest string as a matplotlib label: plain text, never math."""
    return str(value).replace("$", r"\$")


def _png_uri(draw: Callable[[Path], Any]) -> str:
    """Run ``draw(path)`` into a temporary PNG and return it as a data: URI."""
    with tempfile.TemporaryDirectory(prefix="edgec-report-") as folder:
        path = Path(folder) / "chart.png"
        draw(path)
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def ranking_chart(ranked: Sequence[tuple[str, float]], title: str) -> str:
    """Nodes by output error when only that node is quantized (the build's OUT.<pass>-sensitivity.png)."""
    from edgec.passes.quant import plot_ranking

    rows = [(_label(name), float(error)) for name, error in ranked]
    return _png_uri(lambda path: plot_ranking(rows, path, _label(title)))


def precision_chart(precision_of: Mapping[str, str], title: str) -> str:
    """The precision each node got, in graph order (the build's OUT.<pass>-precision.png)."""
    from edgec.passes.quant import plot_precisions

    labelled = {_label(node): str(fmt) for node, fmt in precision_of.items()}
    return _png_uri(lambda path: plot_precisions(labelled, path, _label(title)))


def layers_chart(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """Channels kept per layer of the chosen model (the build's OUT.layers.png)."""
    from edgec.compiler.search.layers import plot_layers

    clean = [{"layer": _label(r["layer"]), "width": float(r["width"]), "kept": float(r["kept"])} for r in rows]
    return _png_uri(lambda path: plot_layers(path, clean, _label(title)))


def _evaluation(row: Mapping[str, Any]) -> Evaluation:
    """A search candidate of the manifest (``metrics.search.candidates``) as the search's Evaluation."""
    latency, accuracy = row.get("latency_ms"), row.get("accuracy")
    return Evaluation(dict(row.get("knobs") or {}), None if latency is None else float(latency),
                      None if accuracy is None else float(accuracy), row.get("drop"),
                      error=str(row.get("error") or ""), model_digest=str(row.get("digest") or ""))


def pareto_chart(search: Mapping[str, Any], title: str) -> str:
    """Every candidate, the front as a line, the chosen one and the latency target (the build's OUT.pareto.png)."""
    from edgec.compiler.search.pareto import plot_front

    evaluations = [_evaluation(row) for row in search.get("candidates") or []]
    chosen_row = search.get("chosen") or {}
    chosen = next((e for e in evaluations if e.model_digest and e.model_digest == chosen_row.get("digest")
                   and e.candidate == chosen_row.get("knobs")), None)
    if chosen is None and chosen_row:  # not among the candidates (older manifests): its search figures
        latency = (chosen_row.get("latency_ms") or {}).get("predicted")
        chosen = _evaluation({"knobs": chosen_row.get("knobs"), "latency_ms": latency,
                              "accuracy": chosen_row.get("accuracy"), "drop": chosen_row.get("drop")})
        evaluations.append(chosen)
    target = (search.get("objective") or {}).get("latency_ms")
    return _png_uri(lambda path: plot_front(path, evaluations, chosen, target_ms=target,
                                            metric=_label(search.get("metric", "accuracy")), title=_label(title)))
