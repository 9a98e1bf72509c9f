"""Train: launch LoRA training jobs; live loss curve, tokens/s and ETA; cancel.

One job per (base, rank) pair, the same split `reckon train --bases ... --lora-r ...`
makes. The trainer reports "loss" events and progress (tokens_per_s, eta_s) through the
job, and the screen reads both from the database.
"""

from __future__ import annotations

import itertools

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, Static

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, selected_key
from tui.screens.overview import module_available
from tui.text import clock, duration, literal, progress_text
from tui.widgets.jobprogress import JobProgress
from tui.widgets.lossplot import LossPlot

LOSS_POINT_LIMIT = 5000


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


class TrainScreen(AreaScreen):
    """Launch form and candidates on the left; the selected job's curve on the right."""

    BINDINGS = [
        Binding("ctrl+s", "launch_training", "Launch"),
        Binding("ctrl+x", "cancel_job", "Cancel job"),
    ]

    def body(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="train-form", classes="form"):
                yield Label("Launch training", classes="section-title")
                yield Static(id="train-availability")
                yield Label("Bases (comma-separated)")
                yield Input("embedded", id="train-bases")
                yield Label("Dataset id")
                yield Input(id="train-dataset", placeholder="ds-…")
                yield Label("LoRA rank(s), comma-separated")
                yield Input("16", id="train-r")
                yield Label("LoRA alpha (empty: 2 x rank)")
                yield Input(id="train-alpha", type="integer")
                yield Label("Learning rate")
                yield Input("2e-4", id="train-lr", type="number")
                yield Label("Epochs")
                yield Input("3", id="train-epochs", type="number")
                yield Label("Max steps (overrides epochs)")
                yield Input(id="train-max-steps", type="integer")
                yield Button("Launch", id="launch-training", variant="primary")
                yield Button("Cancel selected job", id="cancel-training", variant="error")
                yield Label("Candidates", classes="section-title")
                yield data_table(
                    "candidates-table", "candidate", "status", "base", "dataset", "r", "best val loss")
            with Vertical(id="train-status"):
                yield Label("Training jobs", classes="section-title")
                yield data_table("train-jobs", "job", "base", "r", "status", "progress", "created")
                yield JobProgress(id="train-progress")
                yield Static(id="train-rates")
                yield LossPlot(id="loss-plot")

    def on_mount(self) -> None:
        if not module_available("appliance.training.job"):
            self.query_one("#train-availability", Static).update(Text(
                "Training is not available: appliance.training is not installed.", style="yellow"))
            self.query_one("#launch-training", Button).disabled = True

    # -- launching -----------------------------------------------------------------------------

    def training_params(self) -> list[dict]:
        """Read the form into one train job parameter set per (base, rank)."""
        from appliance.training.config import TrainConfig

        bases = split_list(self.text_value("train-bases"))
        if not bases:
            raise ReckonError("bases are missing; enter 'embedded' or comma-separated base specs")
        dataset = self.text_value("train-dataset")
        if not dataset:
            raise ReckonError("dataset is missing; enter a dataset id from the Dataset screen")
        if module_available("appliance.curation.dataset"):
            from appliance.curation.dataset import ensure_tables

            ensure_tables(self.store)
            if self.store.get("datasets", dataset) is None:
                raise ReckonError(f"dataset {dataset!r} not found; the Dataset screen lists datasets")
        ranks = []
        for item in split_list(self.text_value("train-r")) or ["16"]:
            try:
                ranks.append(int(item))
            except ValueError:
                raise ReckonError(f"LoRA rank must be whole numbers, got {item!r}") from None
        alpha = self.int_value("train-alpha", "LoRA alpha", default=0) or None
        config: dict = {"learning_rate": self.float_value("train-lr", "learning rate", 2e-4),
                        "epochs": self.float_value("train-epochs", "epochs", 3.0)}
        max_steps = self.int_value("train-max-steps", "max steps", default=0)
        if max_steps:
            config["max_steps"] = max_steps
        params = []
        for base, rank in itertools.product(bases, ranks):
            candidate = {**config, "r": rank, "lora_alpha": alpha or 2 * rank}
            TrainConfig.from_dict(candidate)        # raises ConfigError naming the bad field
            params.append({"base": base, "dataset": dataset, "config": candidate})
        return params

    def action_launch_training(self) -> None:
        if not module_available("appliance.training.job"):
            self.report_error("training is not available: appliance.training is not installed")
            return
        try:
            job_ids = [self.reckon.launch_job("train", params) for params in self.training_params()]
        except ReckonError as error:
            self.report_error(error)
            return
        self._follow_job = job_ids[0]
        self.notify(f"started {', '.join(job_ids)}", markup=False)
        self.refresh_data()

    def action_cancel_job(self) -> None:
        job_id = getattr(self, "_follow_job", None)
        if job_id is None:
            self.report_error("no training job selected; select one in the jobs table")
            return
        try:
            self.reckon.cancel_job(job_id)
        except ReckonError as error:
            self.report_error(error)
            return
        self.notify(f"cancel requested for {job_id}; training checkpoints before it stops",
                    markup=False)
        self.refresh_data()

    @on(Button.Pressed, "#launch-training")
    def _launch_pressed(self) -> None:
        self.action_launch_training()

    @on(Button.Pressed, "#cancel-training")
    def _cancel_pressed(self) -> None:
        self.action_cancel_job()

    @on(DataTable.RowHighlighted, "#train-jobs")
    def _job_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._follow_job = event.row_key.value
        self.show_job()

    # -- polling -------------------------------------------------------------------------------

    def refresh_data(self) -> None:
        rows = []
        for job in self.store.rows("jobs", "kind = 'train'", order_by="created_at desc", limit=50):
            params = job["params"] or {}
            rows.append((job["id"], literal(job["id"]), literal(params.get("base") or ""),
                         str((params.get("config") or {}).get("r", "")), job["status"],
                         progress_text(job["progress"]), clock(job["created_at"])))
        table = self.query_one("#train-jobs", DataTable)
        fill_table(table, rows)
        if getattr(self, "_follow_job", None) is None:
            self._follow_job = selected_key(table)
        self.show_job()
        if module_available("appliance.training.job"):
            from appliance.training.job import list_candidates

            candidates = []
            for row in list_candidates(self.store)[:100]:
                best = (row.get("metrics") or {}).get("best_val_loss")
                candidates.append((row["id"], literal(row["id"]), row["status"],
                                   literal(row["base_spec"]), literal(row["dataset_id"]),
                                   str((row.get("config") or {}).get("r", "")),
                                   "" if best is None else f"{best:.4f}"))
            fill_table(self.query_one("#candidates-table", DataTable), candidates)

    def show_job(self) -> None:
        job_id = getattr(self, "_follow_job", None)
        job = self.store.get("jobs", job_id) if job_id else None
        self.query_one("#train-progress", JobProgress).show_job(job)
        rates = self.query_one("#train-rates", Static)
        plot = self.query_one("#loss-plot", LossPlot)
        if job is None:
            rates.update("")
            plot.show_points([], [], [], [])
            return
        progress = job["progress"] or {}
        line = Text()
        if progress.get("tokens_per_s") is not None:
            line.append(f"{progress['tokens_per_s']:.0f} tokens/s", style="bold")
        if progress.get("eta_s") is not None and job["status"] == "running":
            line.append(f"   ETA {duration(progress['eta_s'])}")
        if progress.get("loss") is not None:
            line.append(f"   loss {progress['loss']:.4f}")
        if progress.get("lr") is not None:
            line.append(f"   lr {progress['lr']:.2e}")
        rates.update(line)

        # Only reload the curve when new points arrived since the last poll.
        last = self.store.db.execute("select max(id) from job_events where job_id = ? and kind = 'loss'",
                                     [job_id]).fetchone()[0]
        if getattr(self, "_plotted", None) == (job_id, last):
            return
        self._plotted = (job_id, last)
        steps, losses, val_steps, val_losses = [], [], [], []
        for event in self.store.rows("job_events", "job_id = ? and kind = 'loss'", [job_id],
                                     order_by="id", limit=LOSS_POINT_LIMIT):
            data = event["data"] or {}
            if data.get("val_loss") is not None:
                val_steps.append(data["step"])
                val_losses.append(data["val_loss"])
            elif data.get("loss") is not None:
                steps.append(data["step"])
                losses.append(data["loss"])
        plot.show_points(steps, losses, val_steps, val_losses)
