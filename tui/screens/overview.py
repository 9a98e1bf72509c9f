"""Overview: pack, teacher, counts, candidates, frozen versions, ledger status, running jobs."""

from __future__ import annotations

import importlib.util

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import DataTable, Label, Static

from appliance import jobs
from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table
from tui.text import clock, literal, progress_text, short

ACTIVE_STATUSES = ("queued", "running", "cancel_requested")


def module_available(name: str) -> bool:
    """True when `name` can be imported (parts of the appliance may not be installed)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def key_values(rows: list[tuple[str, object]]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, literal(value) if not isinstance(value, Text) else value)
    return table


class OverviewScreen(AreaScreen):
    """Where the loop stands: one card per part, and the jobs still running."""

    def body(self) -> ComposeResult:
        with Grid(id="overview-cards"):
            yield Static(id="card-pack", classes="card")
            yield Static(id="card-traces", classes="card")
            yield Static(id="card-datasets", classes="card")
            yield Static(id="card-candidates", classes="card")
            yield Static(id="card-versions", classes="card")
            yield Static(id="card-ledger", classes="card")
        with Vertical(id="overview-jobs"):
            yield Label("Running jobs", classes="section-title")
            yield data_table(
                "running-jobs", "job", "kind", "status", "progress", "message", "started")

    def on_mount(self) -> None:
        for card, title in (("pack", "Pack and teacher"), ("traces", "Traces"),
                            ("datasets", "Datasets"), ("candidates", "Candidates"),
                            ("versions", "Frozen versions"), ("ledger", "Ledger")):
            self.query_one(f"#card-{card}", Static).border_title = title

    def refresh_data(self) -> None:
        store = self.store
        jobs.mark_stale_jobs(store)
        self.query_one("#card-pack", Static).update(self._pack_card())
        self.query_one("#card-traces", Static).update(self._traces_card())
        self.query_one("#card-datasets", Static).update(self._datasets_card())
        self.query_one("#card-candidates", Static).update(self._candidates_card())
        self.query_one("#card-versions", Static).update(self._versions_card())
        self.query_one("#card-ledger", Static).update(self._ledger_card())
        rows = []
        placeholders = ", ".join("?" for _ in ACTIVE_STATUSES)
        for job in store.rows("jobs", f"status in ({placeholders})", ACTIVE_STATUSES,
                              order_by="created_at desc", limit=50):
            progress = job["progress"] or {}
            rows.append((job["id"], literal(job["id"]), job["kind"], job["status"],
                         progress_text(progress), literal(progress.get("message") or ""),
                         clock(job["started_at"] or job["created_at"])))
        fill_table(self.query_one("#running-jobs", DataTable), rows)

    # -- cards -----------------------------------------------------------------------------------

    def _pack_card(self):
        from appliance.packs import load_pack

        # Loading a pack reads and hashes its files, so it happens once per screen.
        if getattr(self, "_pack_rows", None) is None:
            try:
                pack = load_pack(self.reckon.pack)
                self._pack_rows = [("pack", f"{pack.id} {pack.version}"),
                                   ("digest", short(pack.digest, 19)),
                                   ("tools", str(len(pack.tools)))]
            except (ReckonError, OSError) as error:
                self._pack_rows = [("pack", Text(f"{self.reckon.pack}: {error}", style="red"))]
        rows: list[tuple[str, object]] = list(self._pack_rows)
        rows.append(("teacher", self.reckon.teacher))
        latest = next(self.store.rows("runs", order_by="created_at desc", limit=1), None)
        if latest is not None:
            teacher = latest["teacher"] or {}
            rows.append(("last run", f"{latest['id']} ({latest['status']})"))
            rows.append(("its teacher", f"{teacher.get('kind')}:{teacher.get('model')}"))
        return key_values(rows)

    def _traces_card(self):
        store = self.store
        total = store.count("traces")
        rows: list[tuple[str, object]] = [("traces", str(total)), ("runs", str(store.count("runs")))]
        for outcome, count in store.db.execute(
                "select outcome, count(*) from traces group by outcome order by count(*) desc"):
            rows.append((f"  {outcome}", str(count)))
        reviewed = store.count("traces", "review_status is not null")
        rows.append(("reviewed", str(reviewed)))
        return key_values(rows)

    def _datasets_card(self):
        if not module_available("appliance.curation.dataset"):
            return Text("Curation is not installed in this build.", style="yellow")
        from appliance.curation import dataset

        dataset.ensure_tables(self.store)
        rows: list[tuple[str, object]] = [("datasets", str(self.store.count("datasets")))]
        latest = next(self.store.rows("datasets", order_by="created_at desc", limit=1), None)
        if latest is not None:
            rows.append(("latest", latest["id"]))
            rows.append(("examples", f"{latest['n_train']} train, {latest['n_validation']} validation"))
        return key_values(rows)

    def _candidates_card(self):
        if not module_available("appliance.training.job"):
            return Text("Training is not installed in this build.", style="yellow")
        from appliance.training.job import list_candidates

        candidates = list_candidates(self.store)
        rows: list[tuple[str, object]] = [("candidates", str(len(candidates)))]
        for status in ("training", "trained", "interrupted", "failed"):
            count = sum(1 for row in candidates if row["status"] == status)
            if count:
                rows.append((f"  {status}", str(count)))
        return key_values(rows)

    def _versions_card(self):
        if not module_available("bundles.freeze"):
            return Text("Bundles are not installed in this build.", style="yellow")
        from bundles.freeze import list_versions

        versions = list_versions(self.reckon.workspace)
        signed = sum(1 for row in versions if row.get("signer_name"))
        rows: list[tuple[str, object]] = [("versions", str(len(versions))), ("signed", str(signed))]
        if versions:
            rows.append(("latest", short(versions[0]["id"], 16)))
        return key_values(rows)

    def _ledger_card(self):
        if not module_available("audit.ledger"):
            return Text("The audit ledger is not installed in this build.", style="yellow")
        from audit.ledger import Ledger

        path = self.reckon.workspace.ledger_path
        if not path.is_file():
            return Text("No ledger yet: the first freeze or eval entry creates it.", style="dim")
        try:
            with Ledger.open(path, read_only=True) as ledger:
                size = ledger.size()
                latest = ledger.latest_checkpoint()
        except ReckonError as error:
            return Text(f"Ledger cannot be read: {error}", style="red")
        rows: list[tuple[str, object]] = [("entries", str(size))]
        if latest is None:
            rows.append(("checkpoint", Text("none", style="yellow")))
        else:
            covered = "all entries" if latest.size == size else f"{latest.size} of {size} entries"
            rows.append(("checkpoint", f"size {latest.size} ({covered})"))
            rows.append(("signed at", latest.created_at))
        return key_values(rows)
