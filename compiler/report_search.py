"""The report page's search section: the Pareto front, each pass's share of the saving, predicted vs measured.

The Pareto front with the chosen point marked, each pass's share of the latency saving, and the search's latency
estimates against the measurements and any device-file calibration (``metrics.search``, docs/search.md).
"""

from __future__ import annotations

from typing import Any

from edgec.compiler import report_charts
from edgec.compiler.report_html import (
    Html,
    as_dict,
    as_list,
    bar,
    chart,
    facts,
    is_number,
    join,
    none_line,
    num,
    para,
    plain,
    table,
    tag,
)


def _objective(objective: dict[str, Any]) -> str:
    goals = []
    if objective.get("latency_ms") is not None:
        goals.append(f"latency within {plain(objective['latency_ms'], '.4g')} ms (fits when measured within "
                     f"{plain(objective.get('fits_within_ms'), '.4g')} ms)")
    if objective.get("max_drop") is not None:
        goals.append(f"accuracy drop at most {plain(objective['max_drop'], '.4g')}")
    return "; ".join(goals) or "none recorded"


def _summary(search: dict[str, Any]) -> Html:
    chosen, original = as_dict(search.get("chosen")), as_dict(search.get("original"))
    passes = ", ".join(str(p) for p in as_list(chosen.get("passes")))
    window = {True: "yes", False: "no", None: "no latency target"}.get(chosen.get("in_window"), "?")
    return facts([
        ("goal", _objective(as_dict(search.get("objective")))),
        ("strategy, budget", f"{search.get('strategy')}, {search.get('budget')} builds; "
                             f"{search.get('evaluations')} candidates evaluated ({search.get('failed')} failed) "
                             f"in {plain(search.get('wall_s'))} s"),
        ("accuracy measure", search.get("metric")),
        ("latency source", search.get("latency_source")),
        ("original", f"{plain(original.get('latency_ms'), '.4g')} ms, accuracy "
                     f"{plain(original.get('accuracy'), '.4f')}"),
        ("chosen", f"{chosen.get('candidate')} ({passes}): accuracy {plain(chosen.get('accuracy'), '.4f')}, "
                   f"drop {plain(chosen.get('drop'), '+.4f')}; in the target window: {window}"),
    ])


def _pareto(search: dict[str, Any]) -> Html:
    rows = [as_dict(r) for r in as_list(search.get("pareto"))]
    table_rows = [("★ chosen" if r.get("chosen") else "", r.get("candidate"), num(r.get("latency_ms"), ".4g"),
                   num(r.get("accuracy"), ".4f"), num(r.get("drop"), "+.4f")) for r in rows]
    title = f"{len(as_list(search.get('candidates')))} candidates ({search.get('strategy')})"
    return join([tag("h3", "Pareto front"),
                 para("Every candidate in grey, the front (no other candidate is both faster and more accurate) as "
                      "a line, the chosen one as a red star, the latency target dashed."),
                 chart(lambda: report_charts.pareto_chart(search, title), "Pareto front"),
                 table(("", "candidate", "latency ms", "accuracy", "drop"), table_rows, numeric=(2, 3, 4))])


def _shares(rows: list[dict[str, Any]]) -> Html:
    if not rows:
        return none_line("No pass shares: the stages of the chosen pipeline were not timed.")
    first = rows[0]
    original = (float(first["ms_after"]) + float(first["saved_ms"])
                if is_number(first.get("ms_after")) and is_number(first.get("saved_ms")) else None)
    table_rows: list[tuple[Any, ...]] = [("(original)", num(original, ".4g"), "", "")]
    for r in rows:
        name = f"{r.get('pass')}" + ("" if r.get("changed") else " (no change)")
        table_rows.append((name, num(r.get("ms_after"), ".4g"), num(r.get("saved_ms"), "+.4g"),
                           bar(r.get("share")) if r.get("share") is not None else "–"))
    reasons = sorted({str(r["reason"]) for r in rows if r.get("reason")})
    return join([table(("pass", "ms after", "saved ms", "share of the saving"), table_rows, numeric=(1, 2),
                       caption="each stage timed on this host, interleaved with the original"),
                 *(para(f"No shares: {reason}.", class_="warn") for reason in reasons)])


def _confirmations(rows: list[dict[str, Any]]) -> Html:
    if not rows:
        return none_line("No confirmation: the choice was not timed again (no latency target, or a priced one).")
    table_rows = [(r.get("candidate"), num(r.get("search_ratio"), ".3f"), num(r.get("again_ratio"), ".3f"),
                   "per-layer price (replaced by the timing)" if r.get("priced") else "timing")
                  for r in rows]
    return table(("candidate", "ratio in the search", "ratio timed again", "search figure"), table_rows,
                 numeric=(1, 2), caption="confirmations: latency over the original's, in the search and again")


def _calibration(cal: dict[str, Any]) -> Html:
    if not cal:
        return none_line("No latency calibration: no device file priced this search on a host target.")
    models = [as_dict(r) for r in as_list(cal.get("models"))]
    rows = [(str(r.get("model"))[:16], r.get("timings"), num(r.get("measured_ms"), ".4g"),
             num(r.get("uncalibrated_ms"), ".4g"), num(r.get("before_ms"), ".4g"), num(r.get("after_ms"), ".4g"))
            for r in models]
    scales = ", ".join(f"{k} {plain(v, '.3g')}" for k, v in as_dict(cal.get("scales")).items())
    exponents = ", ".join(f"{k} {plain(v, '+.3g')}" for k, v in as_dict(cal.get("exponents")).items())
    return join([facts([("timed models", cal.get("pairs")), ("scale", plain(cal.get("scale"), ".4g")),
                        ("scales per precision", scales or "–"), ("size exponents", exponents or "–"),
                        ("overhead", plain(cal.get("overhead_ms"), ".4g"))]),
                 table(("model", "timings", "measured ms", "tables alone ms", "predicted before ms",
                        "predicted after ms"), rows, numeric=(1, 2, 3, 4, 5),
                       caption="device-file predictions calibrated on this host's timings")])


def _predicted_vs_measured(search: dict[str, Any]) -> Html:
    latency = as_dict(as_dict(search.get("chosen")).get("latency_ms"))
    predicted, measured = latency.get("predicted"), latency.get("measured")
    off = num(measured / predicted, ".2f", "x") if is_number(predicted) and is_number(measured) and predicted else "–"
    chosen = table(("", "predicted ms", "measured ms", "measured / predicted", "measured / original"),
                   [("chosen model", num(predicted, ".4g"), num(measured, ".4g"), off,
                     num(latency.get("measured_ratio_to_original"), ".3f"))], numeric=(1, 2, 3, 4),
                   caption=f"predicted by: {latency.get('predicted_by') or search.get('latency_source')}; measured on "
                           f"{latency.get('measured_on', 'this host')}, in a pair with the original")
    return join([chosen, _confirmations([as_dict(r) for r in as_list(search.get("confirmations"))]),
                 _calibration(as_dict(search.get("latency_calibration")))])


def search_section(m: dict[str, Any]) -> Html:
    """``metrics.search`` in words, charts and tables; one line when the build did not search."""
    search = as_dict(as_dict(m.get("metrics")).get("search"))
    if not search:
        return none_line("No search: this bundle was built with a fixed pass list, so there is no Pareto front, "
                         "pass shares or latency prediction to show.")
    return join([_summary(search), _pareto(search), tag("h3", "Where the saving comes from"),
                 _shares([as_dict(r) for r in as_list(search.get("pass_shares"))]),
                 tag("h3", "Predicted vs measured latency"), _predicted_vs_measured(search)])
