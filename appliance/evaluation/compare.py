"""Compare two or three eval results on one frozen eval set, and gate a cut-over.

`compare(a, b, c)` takes results (EvalResult objects or dicts in the schema documented in
appliance.evaluation.metrics) and returns a comparison dict:

    configs        label (A, B, C), id, model, settings, eval set digest, n_cases
    metrics        one row per main metric: the metric (value, n, Wilson interval) under
                   each configuration and the change against A in percentage points
    categories     the same per case category; rules the same per rule
    failures       failure-category counts per configuration
    tokens         tokens per task (mean, total, n) per configuration
    changed_cases  per candidate: case ids that went pass->fail and fail->pass against A
    gate           the cut-over gate: each candidate against reference A on every critical
                   metric; a candidate passes when it is within `tolerance` points of the
                   reference (not worse by more; lower-is-better metrics mirrored)

A is the reference (for example the teacher), B and C are candidates. Results from
different eval sets are refused, because their numbers do not measure the same thing.

Renderers: `render_terminal` (rich tables), `render_json`, `render_markdown` and
`render_html` (every cell escaped), and `render(comparison, fmt)` to pick one by name.
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

from appliance.errors import ReckonError
from appliance.evaluation.metrics import (MAIN_METRICS, EvalResult, as_result, metric_keys,
                                          metric_lookup)

COMPARISON_SCHEMA = "reckon-eval-comparison/1"
LABELS = ("A", "B", "C")
DEFAULT_CRITICAL = ("accuracy",)
DEFAULT_TOLERANCE_POINTS = 2.0
_EPSILON = 1e-9


class ComparisonError(ReckonError):
    """Results that cannot be compared (different eval sets, bad gate settings)."""


def compare(result_a: EvalResult | Mapping, result_b: EvalResult | Mapping,
            result_c: EvalResult | Mapping | None = None, *,
            critical: Sequence[str] | Mapping[str, float] | None = None,
            tolerance: float = DEFAULT_TOLERANCE_POINTS) -> dict:
    """Compare results A (reference), B and optionally C; see the module docstring.

    critical: metric keys the gate checks ("accuracy", "refusal_accuracy", "rule:<id>",
        "category:<name>", ...), as a list using `tolerance`, or a mapping of key to its
        own tolerance in percentage points. Default: accuracy.
    """
    results = [as_result(result_a), as_result(result_b)]
    if result_c is not None:
        results.append(as_result(result_c))
    digests = {result.evalset_digest for result in results}
    if len(digests) != 1:
        listing = ", ".join(f"{label}={result.evalset_digest}"
                            for label, result in zip(LABELS, results))
        raise ComparisonError(f"results ran on different eval sets ({listing}); compare "
                              "results of one frozen eval set")
    tolerances = _critical_tolerances(critical, tolerance)

    labels = list(LABELS[:len(results)])
    summaries = [result.summary() for result in results]
    keys = metric_keys(summaries)
    rows = [_row(key, summaries) for key in keys]
    return {
        "schema": COMPARISON_SCHEMA,
        "evalset_digest": results[0].evalset_digest,
        "configs": [_config(label, result, summary)
                    for label, result, summary in zip(labels, results, summaries)],
        "metrics": [row for row in rows if row["key"] in MAIN_METRICS],
        "categories": [row for row in rows if row["key"].startswith("category:")],
        "rules": [row for row in rows if row["key"].startswith("rule:")],
        "failures": [{"category": category,
                      "counts": [summary["failures"].get(category, 0) for summary in summaries]}
                     for category in summaries[0]["failures"]],
        "tokens": [{"label": label, **summary["tokens"]}
                   for label, summary in zip(labels, summaries)],
        "changed_cases": [_changed_cases(results[0], result, label)
                          for label, result in zip(labels[1:], results[1:])],
        "gate": _gate(labels, summaries, tolerances),
    }


def _critical_tolerances(critical: Sequence[str] | Mapping[str, float] | None,
                         tolerance: float) -> dict[str, float]:
    if tolerance < 0:
        raise ComparisonError(f"tolerance must be >= 0 percentage points, got {tolerance}")
    if critical is None:
        critical = DEFAULT_CRITICAL
    if isinstance(critical, Mapping):
        tolerances = {str(key): float(value) for key, value in critical.items()}
    else:
        tolerances = {str(key): float(tolerance) for key in critical}
    for key, value in tolerances.items():
        if value < 0:
            raise ComparisonError(f"tolerance for {key!r} must be >= 0 points, got {value}")
    return tolerances


def _config(label: str, result: EvalResult, summary: Mapping) -> dict:
    return {"label": label, "id": result.id, "model": result.model, "settings": result.settings,
            "evalset_digest": result.evalset_digest, "evalset_name": result.evalset_name,
            "n_cases": summary["n_cases"]}


def _row(key: str, summaries: Sequence[Mapping]) -> dict:
    values = [metric_lookup(summary, key) for summary in summaries]
    reference = values[0]
    changes = [None]
    for value in values[1:]:
        if reference is None or value is None or reference["value"] is None or value["value"] is None:
            changes.append(None)
        else:
            changes.append((value["value"] - reference["value"]) * 100)
    higher = next((value["higher_is_better"] for value in values if value is not None), True)
    return {"key": key, "higher_is_better": higher, "values": values, "changes": changes}


def _changed_cases(reference: EvalResult, candidate: EvalResult, label: str) -> dict:
    before = {case.case_id: case for case in reference.cases}
    after = {case.case_id: case for case in candidate.cases}
    common = [case_id for case_id in before if case_id in after]
    return {
        "label": label, "against": "A",
        "pass_to_fail": [case_id for case_id in common
                         if before[case_id].passed and not after[case_id].passed],
        "fail_to_pass": [case_id for case_id in common
                         if not before[case_id].passed and after[case_id].passed],
        "only_in_reference": [case_id for case_id in before if case_id not in after],
        "only_in_candidate": [case_id for case_id in after if case_id not in before],
    }


def _gate(labels: Sequence[str], summaries: Sequence[Mapping], tolerances: Mapping[str, float]) -> dict:
    candidates = []
    for label, summary in zip(labels[1:], summaries[1:]):
        checks = [_gate_check(key, limit, summaries[0], summary) for key, limit in tolerances.items()]
        candidates.append({"label": label, "passed": all(check["passed"] for check in checks),
                           "checks": checks})
    return {"reference": labels[0], "critical": dict(tolerances), "candidates": candidates}


def _gate_check(key: str, limit: float, reference_summary: Mapping, candidate_summary: Mapping) -> dict:
    reference = metric_lookup(reference_summary, key)
    candidate = metric_lookup(candidate_summary, key)
    check = {"metric": key, "tolerance_points": limit, "passed": False, "change_points": None,
             "reference": reference["value"] if reference else None,
             "candidate": candidate["value"] if candidate else None, "reason": ""}
    if reference is None and candidate is None:
        check["reason"] = "no such metric in either result (check the metric name)"
        return check
    if check["reference"] is None or check["candidate"] is None:
        missing = "reference" if check["reference"] is None else "candidate"
        check["reason"] = f"not measured on the {missing} (no cases)"
        return check
    change = (check["candidate"] - check["reference"]) * 100
    check["change_points"] = change
    higher = (reference or candidate)["higher_is_better"]
    worse_by = -change if higher else change
    check["passed"] = worse_by <= limit + _EPSILON
    check["reason"] = (f"within {limit:g} points" if check["passed"]
                       else f"worse by {worse_by:.1f} points, more than {limit:g}")
    return check


# -- rendering -----------------------------------------------------------------------------


def format_metric(metric: Mapping | None) -> str:
    """Render "72.5% [65.1-78.9] n=120", or "-" when not measured."""
    if metric is None or not metric.get("n"):
        return "-"
    return (f"{metric['value'] * 100:.1f}% [{metric['low'] * 100:.1f}-{metric['high'] * 100:.1f}]"
            f" n={metric['n']}")


def format_change(change: float | None) -> str:
    return "" if change is None else f"{change:+.1f} pt"


def _table_rows(comparison: Mapping, section: str) -> tuple[list[str], list[list[str]]]:
    labels = [config["label"] for config in comparison["configs"]]
    header = ["metric"] + labels + [f"{label}-A" for label in labels[1:]]
    rows = []
    for row in comparison[section]:
        name = row["key"] + ("" if row["higher_is_better"] else " (lower is better)")
        rows.append([name] + [format_metric(value) for value in row["values"]]
                    + [format_change(change) for change in row["changes"][1:]])
    return header, rows


def _token_rows(comparison: Mapping) -> tuple[list[str], list[list[str]]]:
    rows = []
    for tokens in comparison["tokens"]:
        mean = "-" if tokens["mean"] is None else f"{tokens['mean']:.1f}"
        rows.append([tokens["label"], mean, str(tokens["total"]), str(tokens["n"])])
    return ["config", "tokens per task (mean)", "total tokens", "n"], rows


def _config_rows(comparison: Mapping) -> tuple[list[str], list[list[str]]]:
    rows = [[config["label"], config.get("id") or "", _compact(config["model"]),
             _compact(config["settings"]), str(config["n_cases"])]
            for config in comparison["configs"]]
    return ["config", "result", "model", "settings", "cases"], rows


def _failure_rows(comparison: Mapping) -> tuple[list[str], list[list[str]]]:
    labels = [config["label"] for config in comparison["configs"]]
    rows = [[row["category"]] + [str(count) for count in row["counts"]]
            for row in comparison["failures"]]
    return ["failure"] + labels, rows


def _changed_rows(comparison: Mapping) -> tuple[list[str], list[list[str]]]:
    rows = []
    for changed in comparison["changed_cases"]:
        for kind in ("pass_to_fail", "fail_to_pass"):
            ids = changed[kind]
            rows.append([f"{changed['against']} -> {changed['label']}", kind.replace("_", " "),
                         str(len(ids)), ", ".join(ids)])
    return ["configs", "change", "cases", "case ids"], rows


def _gate_rows(comparison: Mapping) -> tuple[list[str], list[list[str]]]:
    rows = []
    for candidate in comparison["gate"]["candidates"]:
        for check in candidate["checks"]:
            rows.append([candidate["label"], check["metric"],
                         _percent(check["reference"]), _percent(check["candidate"]),
                         format_change(check["change_points"]),
                         f"{check['tolerance_points']:g} pt",
                         "pass" if check["passed"] else "FAIL", check["reason"]])
    return ["candidate", "critical metric", "reference", "candidate value", "change",
            "tolerance", "verdict", "reason"], rows


def _gate_lines(comparison: Mapping) -> list[str]:
    lines = []
    for candidate in comparison["gate"]["candidates"]:
        verdict = "PASSES" if candidate["passed"] else "FAILS"
        lines.append(f"Cut-over gate: {candidate['label']} {verdict} against "
                     f"{comparison['gate']['reference']}.")
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _compact(value: Any) -> str:
    if not value:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _sections(comparison: Mapping) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    sections = [("Configurations", _config_rows(comparison)),
                ("Metrics", _table_rows(comparison, "metrics"))]
    if comparison["categories"]:
        sections.append(("Per category", _table_rows(comparison, "categories")))
    if comparison["rules"]:
        sections.append(("Per rule", _table_rows(comparison, "rules")))
    sections += [("Failures", _failure_rows(comparison)),
                 ("Tokens per task", _token_rows(comparison)),
                 ("Changed cases", _changed_rows(comparison)),
                 ("Cut-over gate", _gate_rows(comparison))]
    return sections


def render(comparison: Mapping, fmt: str) -> str:
    """Render as "json", "markdown" (or "md") or "html"; raise ComparisonError otherwise."""
    renderers = {"json": render_json, "markdown": render_markdown, "md": render_markdown,
                 "html": render_html}
    if fmt not in renderers:
        raise ComparisonError(f"unknown report format {fmt!r}; use json, markdown or html")
    return renderers[fmt](comparison)


def render_json(comparison: Mapping) -> str:
    return json.dumps(comparison, ensure_ascii=False, indent=2, sort_keys=True, default=str)


def render_terminal(comparison: Mapping, console=None) -> None:
    """Print the comparison as rich tables; cell text is never read as rich markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False, soft_wrap=False)
    console.print(Text(f"Eval set {comparison['evalset_digest']}"))
    for title, (header, rows) in _sections(comparison):
        table = Table(title=title)
        for column in header:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*[Text(cell) for cell in row])
        console.print(table)
    for line in _gate_lines(comparison):
        style = "bold green" if "PASSES" in line else "bold red"
        console.print(Text(line, style=style))


_MARKDOWN_SPECIAL = "\\`*_{}[]<>()#+!|"


def escape_markdown(text: str) -> str:
    """Escape Markdown syntax (and table pipes) so that cell text renders literally."""
    escaped = "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in str(text))
    return escaped.replace("\r", " ").replace("\n", " ")


def render_markdown(comparison: Mapping) -> str:
    lines = ["# Eval comparison", "", f"Eval set: {escape_markdown(comparison['evalset_digest'])}", ""]
    for title, (header, rows) in _sections(comparison):
        lines += [f"## {escape_markdown(title)}", ""]
        lines.append("| " + " | ".join(escape_markdown(cell) for cell in header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in rows:
            lines.append("| " + " | ".join(escape_markdown(cell) for cell in row) + " |")
        lines.append("")
    lines += [escape_markdown(line) for line in _gate_lines(comparison)]
    return "\n".join(lines) + "\n"


def render_html(comparison: Mapping) -> str:
    """Render a standalone HTML page; every value is escaped with html.escape."""
    escape = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
             "<title>Eval comparison</title>",
             "<style>table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #999;padding:2px 6px;text-align:left}</style>",
             "</head><body>", "<h1>Eval comparison</h1>",
             f"<p>Eval set: <code>{escape(comparison['evalset_digest'])}</code></p>"]
    for title, (header, rows) in _sections(comparison):
        parts.append(f"<h2>{escape(title)}</h2><table><thead><tr>"
                     + "".join(f"<th>{escape(cell)}</th>" for cell in header) + "</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</tbody></table>")
    for line in _gate_lines(comparison):
        parts.append(f"<p><strong>{escape(line)}</strong></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
