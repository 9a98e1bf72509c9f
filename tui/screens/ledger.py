"""Ledger: the auditor's view of the audit ledger, opened read-only.

Versions and their eval history, verification of every hash, root and signature, and
the latest signed checkpoint. Nothing here writes the ledger: it is opened with SQLite's
mode=ro, as `reckon ledger show|verify` do.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Label, Static

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, selected_key
from tui.screens.overview import module_available
from tui.text import literal, short


def metrics_summary(payload: dict) -> str:
    from audit.payloads import metric_interval

    parts = []
    for name, metric in sorted((payload.get("metrics") or {}).items()):
        low, high = metric_interval(metric)
        value = metric.get("value")
        if isinstance(value, (int, float)) and isinstance(low, (int, float)) and isinstance(high, (int, float)):
            parts.append(f"{name} {value:.3f} [{low:.3f}, {high:.3f}] n={metric.get('n')}")
        else:
            parts.append(f"{name} {value} n={metric.get('n')}")
    return "; ".join(parts)


def rules_summary(payload: dict) -> str:
    from audit.payloads import rule_passed

    return "; ".join(f"{rule} {rule_passed(result)}/{result.get('n')}"
                     for rule, result in sorted((payload.get("rules") or {}).items()))


class LedgerScreen(AreaScreen):
    """Versions on the left; the selected version's entries, verification and checkpoint."""

    BINDINGS = [Binding("v", "verify", "Verify ledger")]

    def body(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="ledger-versions"):
                yield Static(id="ledger-status")
                yield Label("Versions", classes="section-title")
                yield data_table("versions-ledger", "version", "evals", "entries", "first", "last")
                yield Button("Verify ledger", id="verify-ledger", variant="primary")
                yield Static(id="verify-result")
            with VerticalScroll(id="ledger-detail"):
                yield Label("Entries of the selected version", classes="section-title")
                yield data_table(
                    "version-entries", "index", "time", "kind", "operator", "metrics", "rules")
                yield Label("Latest checkpoint", classes="section-title")
                yield Static(id="checkpoint-note")

    def on_mount(self) -> None:
        if not module_available("audit.ledger"):
            self.query_one("#ledger-status", Static).update(Text(
                "The audit ledger is not available: the audit package is not installed.",
                style="yellow"))
            self.query_one("#verify-ledger", Button).disabled = True

    def open_ledger(self):
        from audit.ledger import Ledger

        return Ledger.open(self.reckon.workspace.ledger_path, read_only=True)

    def refresh_data(self) -> None:
        if not module_available("audit.ledger"):
            return
        status = self.query_one("#ledger-status", Static)
        if not self.reckon.workspace.ledger_path.is_file():
            status.update(Text("No ledger yet: the first freeze or eval entry creates it.", style="dim"))
            return
        try:
            with self.open_ledger() as ledger:
                size = ledger.size()
                # Entries are append-only, so an unchanged size means nothing to reload.
                if getattr(self, "_loaded_size", None) != size:
                    self._loaded_size = size
                    self._load(ledger)
        except ReckonError as error:
            status.update(literal(f"Ledger cannot be read: {error}", "red"))

    def _load(self, ledger) -> None:
        versions: dict[str, dict] = {}
        self.entries_by_version: dict[str, list] = {}
        for entry in ledger.entries():
            version = entry.version
            if version is None:
                continue
            info = versions.setdefault(version, {"evals": 0, "entries": 0, "first": entry.time,
                                                 "last": entry.time})
            info["entries"] += 1
            info["evals"] += entry.kind == "eval"
            info["last"] = entry.time
            self.entries_by_version.setdefault(version, []).append(entry)
        latest = ledger.latest_checkpoint()
        size = ledger.size()
        status = Text()
        status.append("origin ", style="bold")
        status.append(literal(ledger.origin))
        status.append(f"\n{size} entries, {len(versions)} versions", style="")
        status.append("\nopened read-only", style="dim")
        self.query_one("#ledger-status", Static).update(status)
        self.query_one("#checkpoint-note", Static).update(
            literal(latest.note) if latest else Text("No checkpoint yet.", style="yellow"))
        rows = [(version, literal(short(version, 23)), str(info["evals"]), str(info["entries"]),
                 literal(info["first"]), literal(info["last"]))
                for version, info in versions.items()]
        table = self.query_one("#versions-ledger", DataTable)
        fill_table(table, rows)
        self.show_version(selected_key(table))

    @on(DataTable.RowHighlighted, "#versions-ledger")
    def _version_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_version(event.row_key.value)

    def show_version(self, version: str | None) -> None:
        rows = []
        for entry in getattr(self, "entries_by_version", {}).get(version, []):
            payload = entry.payload
            rows.append((str(entry.index), str(entry.index), literal(entry.time), entry.kind,
                         literal(entry.operator), literal(metrics_summary(payload)),
                         literal(rules_summary(payload))))
        fill_table(self.query_one("#version-entries", DataTable), rows)

    # -- verification --------------------------------------------------------------------------

    def action_verify(self) -> None:
        if not self.reckon.workspace.ledger_path.is_file():
            self.report_error("there is no ledger to verify yet")
            return
        self.query_one("#verify-result", Static).update(Text("verifying…", style="dim"))
        self.verify()

    @on(Button.Pressed, "#verify-ledger")
    def _verify_pressed(self) -> None:
        self.action_verify()

    @work(thread=True, exclusive=True, group="ledger")
    def verify(self) -> None:
        """Recompute every hash, root and signature off the UI thread."""
        from audit.verify import problem_lines

        try:
            with self.open_ledger() as ledger:
                report = ledger.verify(None)
        except ReckonError as error:
            self.app.call_from_thread(self.show_verification, None, [str(error)], [])
            return
        self.app.call_from_thread(self.show_verification, report, problem_lines(report),
                                  list(report.warnings))

    def show_verification(self, report, problems: list[str], warnings: list[str]) -> None:
        text = Text()
        if report is not None and report.ok:
            text.append("OK", style="bold green")
            text.append(f": {report.size} entries, {report.checkpoints_checked} checkpoints checked")
            if report.latest_checkpoint is not None:
                text.append(f"\nlatest valid checkpoint: size {report.latest_checkpoint.size}")
        else:
            text.append("FAILED", style="bold red")
            if report is not None:
                text.append(f": {report.size} entries")
        for line in problems:
            text.append("\nproblem: ", style="red")
            text.append(literal(line))
        for line in warnings:
            text.append("\nwarning: ", style="yellow")
            text.append(literal(line))
        self.verification = report
        self.query_one("#verify-result", Static).update(text)
