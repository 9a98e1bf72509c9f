"""Eval: run an eval as a job; compare configurations side by side.

Runs go through appliance.evaluation.runner (job kind "eval", the `eval_results` table),
as `reckon eval run` does. The comparison loads two or three results (stored ids, labels
or result JSON files) with runner.load_result and calls compare as `reckon eval compare`
does: a bar chart per metric with its 95 % interval, the cases that changed against A,
tokens per task and the cut-over gate.
"""

from __future__ import annotations

import json

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, Static

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, table_signature
from tui.screens.overview import module_available
from tui.text import clock, literal, short
from tui.widgets.barchart import BarChart
from tui.widgets.jobprogress import JobProgress

RUNNER_MODULE = "appliance.evaluation.runner"
# The defaults of `reckon eval compare`.
CRITICAL_METRICS = ("tool_name_accuracy", "exact_call_accuracy")
TOLERANCE_POINTS = 2.0
MODES = ("both", "first", "task")


def compare_results(results: list[dict]) -> tuple[str | None, dict]:
    """Compare results on the part they share (task before first_decision), or as they are.

    Returns (part name or None, comparison).
    """
    from appliance.evaluation.compare import compare
    from appliance.evaluation.runner import common_parts, part_view

    kwargs = {"critical": list(CRITICAL_METRICS), "tolerance": TOLERANCE_POINTS}
    with_parts = [bool(result.get("parts")) for result in results]
    if any(with_parts):
        shared = common_parts(results)
        if not shared:
            raise ReckonError("the results share no evaluated part (first_decision or task); "
                              "run them with the same mode")
        part = "task" if "task" in shared else shared[0]
        return part, compare(*[part_view(result, part) for result in results], **kwargs)
    return None, compare(*results, **kwargs)


def accuracy_text(row: dict) -> str:
    """Format the accuracy of a stored result row's primary part as a percentage."""
    summary = row.get("summary") or {}
    part = "task" if "task" in summary else next(iter(summary), None)
    metric = ((summary.get(part) or {}).get("metrics") or {}).get("accuracy") if part else None
    if not metric or metric.get("value") is None:
        return ""
    return f"{metric['value'] * 100:.1f} % ({part})"


def metric_groups(comparison: dict) -> list:
    """Bar-chart groups: one per metric row, one bar per configuration."""
    labels = [config["label"] for config in comparison["configs"]]
    groups = []
    for row in comparison["metrics"] + comparison["categories"] + comparison["rules"]:
        series = []
        for label, value in zip(labels, row["values"]):
            if value is None or value.get("value") is None:
                series.append((label, None, ""))
                continue
            shown = (f"{value['value'] * 100:5.1f} %  [{value['low'] * 100:.1f}, "
                     f"{value['high'] * 100:.1f}]  {value['successes']}/{value['n']}")
            series.append((label, value["value"], shown))
        title = row["key"] + ("" if row["higher_is_better"] else " (lower is better)")
        groups.append((title, series))
    return groups


class EvalScreen(AreaScreen):
    """Run form and frozen eval sets on the left; the comparison on the right."""

    BINDINGS = [
        Binding("ctrl+s", "start_eval", "Run eval"),
        Binding("ctrl+o", "compare", "Compare"),
    ]

    def body(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="eval-form", classes="form"):
                yield Label("Run an eval", classes="section-title")
                yield Static(id="eval-availability")
                yield Label("Eval set (empty: the pack's held-out set)")
                yield Input(id="eval-set", placeholder="name, digest or .jsonl")
                yield Label("Model (runtime spec)")
                yield Input("embedded", id="eval-model")
                yield Label("Pack (empty: the eval set's)")
                yield Input(id="eval-pack")
                yield Label("Mode: both, first or task")
                yield Input("both", id="eval-mode")
                yield Label("Cases (empty: all)")
                yield Input(id="eval-limit", type="integer")
                yield Label("Label")
                yield Input(id="eval-label")
                yield Button("Run eval", id="start-eval", variant="primary")
                yield JobProgress(id="eval-progress")
                yield Label("Compare (result id, label or JSON file)", classes="section-title")
                yield Input(id="compare-a", placeholder="A: reference")
                yield Input(id="compare-b", placeholder="B: candidate")
                yield Input(id="compare-c", placeholder="C: optional")
                yield Button("Compare", id="compare", variant="primary")
                yield Label("Frozen eval sets", classes="section-title")
                yield data_table("evalsets-table", "digest", "names", "cases", "frozen")
            with VerticalScroll(id="eval-comparison"):
                yield Label("Stored results (enter: add to the comparison)", classes="section-title")
                yield data_table(
                    "results-table", "result", "label", "eval set", "mode", "cases", "accuracy", "created")
                yield Static(id="compare-configs")
                yield Label("Metrics (95 % Wilson intervals)", classes="section-title")
                yield BarChart(id="metric-chart")
                yield Label("Cases that changed against A", classes="section-title")
                yield data_table("changed-cases", "configs", "change", "case")
                yield Label("Tokens per task", classes="section-title")
                yield data_table("tokens-table", "config", "mean", "total", "n", cursor_type="none")
                yield Static(id="compare-gate")

    def on_mount(self) -> None:
        self.query_one("#metric-chart", BarChart).update(
            Text("Choose two or three results and press Compare.", style="dim"))
        availability = self.query_one("#eval-availability", Static)
        if module_available(RUNNER_MODULE):
            availability.update("")
        else:
            availability.update(Text(
                "Eval runs are not available in this build: appliance.evaluation.runner is not "
                "installed.", style="yellow"))
            self.query_one("#compare", Button).disabled = True
            self.query_one("#start-eval", Button).disabled = True

    # -- running -----------------------------------------------------------------------------------

    def action_start_eval(self) -> None:
        try:
            if not module_available(RUNNER_MODULE):
                raise ReckonError("eval runs are not available: appliance.evaluation.runner is "
                                  "not installed")
            job_id = self.reckon.launch_job("eval", self.eval_params())
        except ReckonError as error:
            self.report_error(error)
            return
        self._follow_job = job_id
        self.notify(f"started {job_id}", markup=False)
        self.refresh_data()

    def eval_params(self) -> dict:
        """Read the form into `runner.evaluate` keyword arguments (ReckonError if invalid)."""
        from appliance.runtimes import parse_spec

        model = self.text_value("eval-model")
        if not model:
            raise ReckonError("model is missing; enter a runtime spec such as 'embedded'")
        parse_spec(model)
        mode = self.text_value("eval-mode") or "both"
        if mode not in MODES:
            raise ReckonError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        params: dict = {"runtime_spec": model, "mode": mode,
                        "evalset": self.text_value("eval-set") or None,
                        "pack": self.text_value("eval-pack") or None,
                        "label": self.text_value("eval-label") or None,
                        "limit": self.int_value("eval-limit", "cases", default=0) or None}
        return params

    @on(Button.Pressed, "#start-eval")
    def _start_pressed(self) -> None:
        self.action_start_eval()

    def refresh_data(self) -> None:
        follow = getattr(self, "_follow_job", None)
        job = self.store.get("jobs", follow) if follow else next(
            self.store.rows("jobs", "kind = 'eval'", order_by="created_at desc", limit=1), None)
        self.query_one("#eval-progress", JobProgress).show_job(job)
        from appliance.evaluation.evalset import list_frozen

        if module_available(RUNNER_MODULE) and self._results_changed():
            from appliance.evaluation.runner import list_results

            results = [(row["id"], literal(row["id"]), literal(row["label"] or ""),
                        literal(row["evalset_name"] or short(row["evalset_digest"], 19)),
                        literal(row["mode"]), str(row["n_cases"]), accuracy_text(row),
                        clock(row["created_at"]))
                       for row in list_results(self.reckon.workspace)[:200]]
            fill_table(self.query_one("#results-table", DataTable), results)

        rows = [(row["digest"], literal(short(row["digest"], 19)), literal(", ".join(row["names"])),
                 str(row["n_cases"] or ""), clock(row["frozen_at"]) if isinstance(
                     row["frozen_at"], (int, float)) else literal(row["frozen_at"] or ""))
                for row in list_frozen(self.reckon.workspace)]
        fill_table(self.query_one("#evalsets-table", DataTable), rows)

    def _results_changed(self) -> bool:
        from appliance.evaluation.runner import RESULTS_TABLE

        signature = table_signature(self.store, RESULTS_TABLE)
        if signature is not None and signature == getattr(self, "_results_signature", None):
            return False
        self._results_signature = signature
        return True

    def on_screen_resume(self) -> None:
        self._results_signature = None
        self.refresh_data()

    # -- comparing ---------------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#results-table")
    def _result_selected(self, event: DataTable.RowSelected) -> None:
        """Put the chosen result into the first empty slot of A, B, C."""
        for label in ("a", "b", "c"):
            field = self.query_one(f"#compare-{label}", Input)
            if not field.value.strip():
                field.value = event.row_key.value
                return
        self.report_error("A, B and C are filled; clear one to choose another result")

    def action_compare(self) -> None:
        refs = [self.text_value(f"compare-{label}") for label in ("a", "b", "c")]
        if not refs[0] or not refs[1]:
            self.report_error("compare needs results A and B (C is optional)")
            return
        if not module_available(RUNNER_MODULE):
            self.report_error("comparing needs appliance.evaluation.runner, which is not installed")
            return
        self.run_compare([ref for ref in refs if ref])

    @on(Button.Pressed, "#compare")
    def _compare_pressed(self) -> None:
        self.action_compare()

    @work(thread=True, exclusive=True, group="compare")
    def run_compare(self, refs: list[str]) -> None:
        """Load the results and compare them off the UI thread (result files can be large)."""
        from appliance.evaluation.runner import load_result

        try:
            results = [load_result(self.reckon.workspace, ref) for ref in refs]
            part, comparison = compare_results(results)
        except ReckonError as error:
            self.app.call_from_thread(self.report_error, error)
            return
        self.app.call_from_thread(self.show_comparison, comparison, part)

    def show_comparison(self, comparison: dict, part: str | None = None) -> None:
        self.comparison = comparison
        configs = Text()
        if part:
            configs.append("part ", style="bold")
            configs.append(f"{part}\n")
        for config in comparison["configs"]:
            configs.append(f"{config['label']} ", style="bold")
            configs.append(literal(config.get("id") or ""))
            configs.append("  ")
            configs.append(literal(json.dumps(config["model"], sort_keys=True)))
            configs.append(f"  {config['n_cases']} cases\n")
        configs.append("eval set ", style="bold")
        configs.append(literal(comparison["evalset_digest"]))
        self.query_one("#compare-configs", Static).update(configs)
        self.query_one("#metric-chart", BarChart).plot(metric_groups(comparison), width=24)

        changed_rows = []
        for changed in comparison["changed_cases"]:
            for kind in ("pass_to_fail", "fail_to_pass"):
                for case_id in changed[kind]:
                    key = f"{changed['label']}:{kind}:{case_id}"
                    changed_rows.append((key, f"{changed['against']} -> {changed['label']}",
                                         kind.replace("_", " "), literal(case_id)))
        fill_table(self.query_one("#changed-cases", DataTable), changed_rows)

        token_rows = []
        for tokens in comparison["tokens"]:
            mean = "-" if tokens["mean"] is None else f"{tokens['mean']:.1f}"
            token_rows.append((tokens["label"], tokens["label"], mean, str(tokens["total"]),
                               str(tokens["n"])))
        fill_table(self.query_one("#tokens-table", DataTable), token_rows)
        self.query_one("#compare-gate", Static).update(gate_text(comparison["gate"]))


def gate_text(gate: dict) -> Text:
    """Summarise the cut-over gate of a comparison."""
    text = Text()
    text.append("Gate ", style="bold")
    for candidate in gate.get("candidates", []):
        passed = candidate.get("passed")
        text.append(f"{candidate.get('label')}: ")
        text.append("pass" if passed else "FAIL", style="green" if passed else "red")
        for check in candidate.get("checks", []):
            text.append("  ")
            text.append(literal(f"{check.get('metric')}: {check.get('reason')}", "dim"))
        text.append("   ")
    return text
