"""The report page's model card: target and EPs, inputs and outputs, size, latency and accuracy before and after.

From the manifest's ``target``, ``inputs``/``outputs``, the first and last pass records, and ``metrics``
(``host_latency_ms``, ``accuracy``, ``calibration``, ``output_error``, the search's estimate).
"""

from __future__ import annotations

from typing import Any

from edgec.compiler.report_html import (
    Html,
    as_dict,
    as_list,
    facts,
    human,
    is_number,
    join,
    none_line,
    num,
    para,
    table,
    tag,
)


def _target_facts(m: dict[str, Any]) -> Html:
    target = as_dict(m.get("target"))
    profile = as_dict(target.get("profile"))
    options = as_dict(m.get("session_options"))
    return facts([
        ("target", join([target.get("name"), f" — {profile['description']}" if profile.get("description") else ""])),
        ("execution providers", " > ".join(str(ep) for ep in as_list(m.get("execution_providers")))),
        ("runtime, model file", f"{profile.get('runtime', 'onnxruntime')}, {m.get('model_file')}"),
        ("session options", f"optimization level {options.get('graph_optimization_level')}, "
                            f"{options.get('intra_op_num_threads')} intra-op thread(s)"),
        ("built with", f"edgec {m.get('edgec_version')}, onnxruntime {m.get('onnxruntime_version')}, "
                       f"{m.get('created')}"),
    ])


def _io_table(m: dict[str, Any]) -> Html:
    rows = []
    for kind in ("inputs", "outputs"):
        for spec in as_list(m.get(kind)):
            spec = as_dict(spec)
            shape = spec.get("shape")
            dims = "unknown rank" if shape is None else "[" + ", ".join(
                "?" if d is None else str(d) for d in as_list(shape)) + "]"
            what = spec.get("kind", "tensor") + (f" of {spec['element_kind']}" if spec.get("element_kind") else "")
            rows.append((kind[:-1], spec.get("name"), dims, spec.get("dtype"), what))
    return table(("", "name", "shape", "dtype", "kind"), rows)


def _size_table(passes: list[Any]) -> Html:
    if not passes:
        return none_line("No pass ran: the model is as it was loaded.")
    first, last = as_dict(as_dict(passes[0]).get("before")), as_dict(as_dict(passes[-1]).get("after"))
    rows = []
    for key, label in (("bytes", "size (bytes)"), ("params", "parameters"), ("flops", "FLOPs"), ("nodes", "nodes")):
        before, after = first.get(key), last.get(key)
        ratio = num(after / before, ".2f", "x") if is_number(before) and is_number(after) and before else num(None)
        rows.append((label, human(before), human(after), ratio))
    return table(("", "before", "after", "after / before"), rows, numeric=(1, 2, 3))


def _latency_table(metrics: dict[str, Any]) -> Html:
    rows: list[tuple[Any, ...]] = []
    host = as_dict(metrics.get("host_latency_ms"))
    if host:
        rows.append(("this host (median, interleaved rounds)", num(host.get("before"), ".4g", " ms"),
                     num(host.get("after"), ".4g", " ms"), num(host.get("ratio"), ".2f", "x")))
    chosen = as_dict(as_dict(metrics.get("search")).get("chosen"))
    latency = as_dict(chosen.get("latency_ms"))
    if latency:
        original = as_dict(as_dict(metrics.get("search")).get("original")).get("latency_ms")
        source = as_dict(metrics.get("search")).get("latency_source")
        rows.append((f"search estimate ({source})", num(original, ".4g", " ms"),
                     num(latency.get("predicted"), ".4g", " ms"), ""))
    if not rows:
        return none_line("No latency figure: the build had no calibration sample to time the models on.")
    return table(("latency", "before", "after", "after / before"), rows, numeric=(1, 2, 3))


def _accuracy_rows(metrics: dict[str, Any]) -> list[tuple[Any, ...]]:
    calibration = as_dict(metrics.get("calibration"))
    split = calibration.get("split")
    rows: list[tuple[Any, ...]] = []
    task = as_dict(calibration.get("task"))
    if task:
        rows.append((task.get("metric"), "the model's own evaluation data", task.get("before"), task.get("after")))
    else:
        accuracy = as_dict(metrics.get("accuracy"))
        for key, before in as_dict(accuracy.get("before")).items():
            rows.append((key, "the model's own evaluation data", before, as_dict(accuracy.get("after")).get(key)))
    split = as_dict(split)
    for part, on in (("held_out", f"held-out calibration samples ({split.get('held_out')})"),
                     ("fit", f"calibration samples the passes were fitted on ({split.get('fit')}; flatters)")):
        score = as_dict(calibration.get(part))
        if score and not (part == "fit" and split.get("in_sample")):
            where = on if not split.get("in_sample") else "calibration samples, in-sample (flatters: no held-out part)"
            rows.append((score.get("metric"), where, score.get("before"), score.get("after")))
    return rows


def _accuracy(metrics: dict[str, Any]) -> Html:
    rows = [(metric, on, num(b, ".4f"), num(a, ".4f"),
             num(a - b, "+.4f") if is_number(a) and is_number(b) else num(None))
            for metric, on, b, a in _accuracy_rows(metrics)]
    parts = [table(("metric", "measured on", "before", "after", "change"), rows, numeric=(2, 3, 4)) if rows else
             none_line("No accuracy figure: no task metric and no held-out calibration score (lossless passes "
                       "keep the outputs within their tolerance instead; see the pass table).")]
    split = as_dict(metrics.get("calibration")).get("split")
    if isinstance(split, str):
        parts.append(para(f"Calibration split: {split}."))
    elif as_dict(split).get("reason"):
        parts.append(para(as_dict(split)["reason"], class_="warn"))
    errors = [as_dict(e) for e in as_list(metrics.get("output_error"))]
    if errors:
        parts.append(table(("output", "max rel error", "max abs error", "cosine"),
                           [(e.get("name"), num(e.get("max_rel"), ".2e"), num(e.get("max_abs"), ".2e"),
                             num(e.get("cosine"), ".6f")) for e in errors], numeric=(1, 2, 3),
                           caption="output error end to end (final model vs the original, calibration samples)"))
    return Html("".join(parts))


def model_card(m: dict[str, Any]) -> Html:
    """Target and EPs, inputs/outputs, size, latency and accuracy before and after."""
    metrics = as_dict(m.get("metrics"))
    return join([_target_facts(m), tag("h3", "Inputs and outputs"), _io_table(m),
                 tag("h3", "Size"), _size_table(as_list(m.get("passes"))),
                 tag("h3", "Latency"), _latency_table(metrics), tag("h3", "Accuracy"), _accuracy(metrics)])


