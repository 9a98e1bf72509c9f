"""Dataset: the curation funnel of each dataset, and building a new one as a curate job."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, selected_key
from tui.screens.overview import module_available
from tui.text import clock, literal
from tui.widgets.barchart import BarChart
from tui.widgets.jobprogress import JobProgress

# The funnel stages in pipeline order, as appliance.curation.pipeline reports them.
FUNNEL_STEPS = ("traces_in", "verified", "selected", "split", "deduplicated",
                "leakage_dropped", "balanced", "rendered")


def funnel_groups(funnel: dict) -> list:
    """Bar-chart groups for a funnel, each bar relative to the largest stage."""
    largest = max([funnel.get(step) or 0 for step in FUNNEL_STEPS] + [1])
    groups = []
    for step in FUNNEL_STEPS:
        if step not in funnel:
            continue
        value = funnel[step] or 0
        groups.append((step.replace("_", " "), [("", value / largest, str(value))]))
    return groups


class DatasetScreen(AreaScreen):
    """Build form on the left; datasets, the selected funnel and filters on the right."""

    BINDINGS = [Binding("ctrl+s", "build_dataset", "Build dataset")]

    def body(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="dataset-form", classes="form"):
                yield Label("Build a dataset", classes="section-title")
                yield Label("Runs (comma-separated)")
                yield Input(id="curate-runs", placeholder="all runs")
                yield Label("Pack (empty: as recorded)")
                yield Input(id="curate-pack", placeholder="recorded pack")
                yield Label("Base (tokenizer and format)")
                yield Input("embedded", id="curate-base")
                yield Label("Samples kept per task")
                yield Input("2", id="curate-per-task", type="integer")
                yield Label("Validation fraction")
                yield Input("0.1", id="curate-validation", type="number")
                yield Label("Max length (tokens)")
                yield Input("1024", id="curate-max-length", type="integer")
                yield Button("Build dataset", id="build-dataset", variant="primary")
            with Vertical(id="dataset-status"):
                yield JobProgress(id="curate-progress")
                yield Label("Datasets", classes="section-title")
                yield data_table(
                    "datasets-table", "dataset", "pack", "train", "validation", "base", "created")
                with Horizontal(id="funnel-row"):
                    with Vertical():
                        yield Label("Curation funnel", classes="section-title")
                        yield BarChart(id="funnel-chart")
                    with Vertical():
                        yield Label("Filters", classes="section-title")
                        yield data_table("filters-table", "filter", "in", "out", cursor_type="none")

    def on_mount(self) -> None:
        if not module_available("appliance.curation.pipeline"):
            self.query_one("#funnel-chart", BarChart).update(Text(
                "Curation is not available: appliance.curation is not installed.", style="yellow"))
            self.query_one("#build-dataset", Button).disabled = True

    def curate_params(self) -> dict:
        """Read the form into curate job parameters (CurationConfig fields)."""
        runs_text = self.text_value("curate-runs")
        runs = [run.strip() for run in runs_text.split(",") if run.strip()] or None
        base = self.text_value("curate-base")
        if not base:
            raise ReckonError("base is missing; enter 'embedded', a .gguf file or a model folder")
        validation = self.float_value("curate-validation", "validation fraction", 0.1)
        if not 0.0 <= validation < 1.0:
            raise ReckonError(f"validation fraction must be in [0, 1), got {validation}")
        params = {"base": base, "per_task": self.int_value("curate-per-task", "samples per task"),
                  "validation_fraction": validation,
                  "max_length": self.int_value("curate-max-length", "max length")}
        pack = self.text_value("curate-pack")
        if pack:
            params["pack"] = pack
        if runs is None:
            params["all"] = True
        else:
            missing = [run for run in runs if self.store.get("runs", run) is None]
            if missing:
                raise ReckonError(f"run(s) not found: {', '.join(missing)}; the Runs screen lists runs")
            params["runs"] = runs
        return params

    def action_build_dataset(self) -> None:
        if not module_available("appliance.curation.pipeline"):
            self.report_error("curation is not available: appliance.curation is not installed")
            return
        try:
            if self.store.count("traces") == 0:
                raise ReckonError("there are no traces to curate; start a harness run first")
            job_id = self.reckon.launch_job("curate", self.curate_params())
        except ReckonError as error:
            self.report_error(error)
            return
        self._follow_job = job_id
        self.notify(f"started {job_id}", markup=False)
        self.refresh_data()

    @on(Button.Pressed, "#build-dataset")
    def _build_pressed(self) -> None:
        self.action_build_dataset()

    @on(DataTable.RowHighlighted, "#datasets-table")
    def _dataset_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_dataset(event.row_key.value)

    def refresh_data(self) -> None:
        follow = getattr(self, "_follow_job", None)
        job = self.store.get("jobs", follow) if follow else next(
            self.store.rows("jobs", "kind = 'curate'", order_by="created_at desc", limit=1), None)
        self.query_one("#curate-progress", JobProgress).show_job(job)
        if not module_available("appliance.curation.dataset"):
            return
        from appliance.curation import dataset

        dataset.ensure_tables(self.store)
        rows = []
        for row in self.store.rows("datasets", order_by="created_at desc", limit=100):
            rows.append((row["id"], literal(row["id"]), literal(row["pack_id"]), str(row["n_train"]),
                         str(row["n_validation"]), literal(row["base"]), clock(row["created_at"])))
        table = self.query_one("#datasets-table", DataTable)
        fill_table(table, rows)
        self.show_dataset(selected_key(table))

    def show_dataset(self, dataset_id: str | None) -> None:
        chart = self.query_one("#funnel-chart", BarChart)
        filters = self.query_one("#filters-table", DataTable)
        row = self.store.get("datasets", dataset_id) if dataset_id else None
        if row is None:
            chart.update(Text("No dataset yet: build one with the form.", style="dim"))
            fill_table(filters, [])
            return
        manifest = row["manifest"] or {}
        chart.plot(funnel_groups(manifest.get("funnel") or {}), width=24)
        fill_table(filters, [(str(index), literal(entry.get("filter")), str(entry.get("in")),
                              str(entry.get("out")))
                             for index, entry in enumerate(manifest.get("filters") or [])])


__all__ = ["DatasetScreen", "funnel_groups"]
