"""Traces: filter by outcome, rule verdict and tool; read one as a conversation; review it.

Reviews go through appliance.curation.review (accept, reject, edit), the functions behind
`reckon review`, so every review records who and when.
"""

from __future__ import annotations

import json

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from appliance.errors import ReckonError
from tui.screens.base import AreaScreen, data_table, fill_table, selected_key
from tui.screens.overview import module_available
from tui.text import literal
from tui.widgets.conversation import ConversationView

TRACE_LIMIT = 500
REVIEW_STATES = ("unreviewed", "accepted", "rejected", "edited")
VERDICTS = ("passed", "failed", "n/a")

TOOL_USED = ("exists (select 1 from json_each(traces.messages) m, "
             "json_each(json_extract(m.value, '$.tool_calls')) c "
             "where json_extract(c.value, '$.function.name') = ?)")


def rule_path(rule_id: str) -> str:
    if '"' in rule_id or "\\" in rule_id:
        raise ReckonError(f"rule id {rule_id!r} contains a quote or backslash; it cannot be filtered")
    return f'$."{rule_id}"'


def trace_filter(outcome: str | None, rule: str | None, tool: str | None,
                 review_state: str | None) -> tuple[str | None, list]:
    """Build the SQL where clause and parameters for the traces table's filters.

    `rule` is "RULE_ID=passed|failed|n/a".
    """
    clauses: list[str] = []
    params: list = []
    if outcome:
        clauses.append("outcome = ?")
        params.append(outcome)
    if rule:
        rule_id, _, verdict = rule.rpartition("=")
        path = rule_path(rule_id)
        if verdict == "passed":
            clauses.append("json_extract(rule_verdicts, ?) = 1")
        elif verdict == "failed":
            clauses.append("json_extract(rule_verdicts, ?) = 0")
        else:
            clauses.append("json_type(rule_verdicts, ?) = 'null'")
        params.append(path + ".passed")
    if tool:
        clauses.append(TOOL_USED)
        params.append(tool)
    if review_state == "unreviewed":
        clauses.append("review_status is null")
    elif review_state:
        clauses.append("review_status = ?")
        params.append(review_state)
    return (" and ".join(clauses) or None), params


class EditTraceModal(ModalScreen[dict | None]):
    """Edit a trace: a new final answer, or new arguments for one tool call."""

    BINDINGS = [Binding("escape", "dismiss_modal", "Cancel")]

    def __init__(self, trace_id: str):
        super().__init__()
        self.trace_id = trace_id

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-dialog", classes="dialog"):
            yield Static(literal(f"Edit trace {self.trace_id}", "bold"))
            yield Label("New final answer (leave empty to edit a tool call instead)")
            yield Input(id="edit-answer")
            yield Label("Assistant step (from 0) and call index, for new arguments")
            with Horizontal(classes="row"):
                yield Input(id="edit-step", placeholder="step", type="integer")
                yield Input("0", id="edit-call", placeholder="call", type="integer")
            yield Label("New arguments (JSON object)")
            yield Input(id="edit-arguments", placeholder='{"a": 1, "b": 2}')
            yield Label("Note (why)")
            yield Input(id="edit-note")
            with Horizontal(classes="buttons"):
                yield Button("Save edit", id="edit-save", variant="primary")
                yield Button("Cancel", id="edit-cancel")

    def action_dismiss_modal(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#edit-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#edit-save")
    def _save(self) -> None:
        try:
            self.dismiss(self.values())
        except ReckonError as error:
            self.app.report_error(error)

    def values(self) -> dict:
        """Read the form into `review.edit` keyword arguments (ReckonError if invalid)."""
        answer = self.query_one("#edit-answer", Input).value
        arguments_text = self.query_one("#edit-arguments", Input).value.strip()
        note = self.query_one("#edit-note", Input).value.strip() or None
        if answer and arguments_text:
            raise ReckonError("give either a new final answer or new arguments, not both")
        if answer:
            return {"answer": answer, "note": note}
        if not arguments_text:
            raise ReckonError("nothing to save: enter a new final answer or new arguments")
        try:
            arguments = json.loads(arguments_text)
        except json.JSONDecodeError as error:
            raise ReckonError(f"arguments are not valid JSON: {error.msg} at char {error.pos}") from None
        step_text = self.query_one("#edit-step", Input).value.strip()
        call_text = self.query_one("#edit-call", Input).value.strip() or "0"
        if not step_text:
            raise ReckonError("step is missing; enter the assistant step (from 0) to edit")
        return {"arguments": arguments, "step": int(step_text), "call_index": int(call_text),
                "note": note}


class TracesScreen(AreaScreen):
    """Filters on top, the trace list on the left and the selected conversation on the right."""

    BINDINGS = [
        Binding("a", "accept", "Accept"),
        Binding("o", "accept_override", "Accept (override)"),
        Binding("r", "reject", "Reject"),
        Binding("e", "edit", "Edit"),
    ]

    def body(self) -> ComposeResult:
        with Horizontal(id="trace-filters"):
            yield Select([], prompt="any outcome", id="filter-outcome")
            yield Select([], prompt="any rule verdict", id="filter-rule")
            yield Select([], prompt="any tool", id="filter-tool")
            yield Select([(state, state) for state in REVIEW_STATES], prompt="any review",
                         id="filter-review")
        with Horizontal():
            with Vertical(id="trace-list"):
                yield Static(id="trace-count")
                yield data_table("traces-table", "trace", "task", "outcome", "rules", "review")
            with Vertical(id="trace-detail"):
                yield Static(id="trace-summary")
                yield ConversationView(id="conversation")

    def on_mount(self) -> None:
        if not module_available("appliance.curation.review"):
            self.query_one("#trace-summary", Static).update(Text(
                "Review is not available: appliance.curation is not installed.", style="yellow"))

    def on_screen_resume(self) -> None:
        self.load_filter_options()
        self.refresh_data()

    # -- filters -------------------------------------------------------------------------------

    def load_filter_options(self) -> None:
        """Fill the filter menus from the values present in the traces table.

        NOTE: this scans every trace's messages, so it runs when the screen is shown and not
        on each poll. Tools first used by traces recorded meanwhile appear on the next visit.
        """
        db = self.store.db
        outcomes = [row[0] for row in db.execute(
            "select distinct outcome from traces where outcome is not null order by outcome")]
        rules = [row[0] for row in db.execute(
            "select distinct r.key from traces, json_each(traces.rule_verdicts) r order by r.key")]
        tools = [row[0] for row in db.execute(
            "select distinct json_extract(c.value, '$.function.name') from traces, "
            "json_each(traces.messages) m, json_each(json_extract(m.value, '$.tool_calls')) c "
            "order by 1")]
        self._set_options("#filter-outcome", [(literal(o), o) for o in outcomes])
        self._set_options("#filter-rule", [(literal(f"{rule} {verdict}"), f"{rule}={verdict}")
                                           for rule in rules for verdict in VERDICTS])
        self._set_options("#filter-tool", [(literal(t), t) for t in tools if t])

    def _set_options(self, selector: str, options: list) -> None:
        select = self.query_one(selector, Select)
        if getattr(select, "_reckon_options", None) == options:
            return
        select._reckon_options = options
        current = select.value
        select.set_options(options)
        if current in {value for _, value in options}:
            select.value = current

    def filters(self) -> tuple[str | None, list]:
        def value(selector: str) -> str | None:
            chosen = self.query_one(selector, Select).value
            return None if chosen is Select.NULL else str(chosen)

        return trace_filter(value("#filter-outcome"), value("#filter-rule"),
                            value("#filter-tool"), value("#filter-review"))

    @on(Select.Changed)
    def _filter_changed(self) -> None:
        self.refresh_data()

    # -- list and detail -----------------------------------------------------------------------

    def refresh_data(self) -> None:
        try:
            where, params = self.filters()
        except ReckonError as error:
            self.report_error(error)
            return
        total = self.store.count("traces", where, params)
        # Select only the listed columns, so that a poll does not decode every conversation.
        sql = ("select id, task_id, outcome, rule_verdicts, review_status from traces"
               + (f" where {where}" if where else "")
               + " order by created_at desc, rowid desc limit ?")
        rows = []
        for trace_id, task_id, outcome, verdicts_json, review_status in self.store.db.execute(
                sql, [*params, TRACE_LIMIT]):
            verdicts = json.loads(verdicts_json) if verdicts_json else {}
            failed = sum(1 for v in verdicts.values() if v.get("passed") is False)
            passed = sum(1 for v in verdicts.values() if v.get("passed") is True)
            rules = f"{passed} ok" + (f", {failed} failed" if failed else "")
            rows.append((trace_id, literal(trace_id), literal(task_id), literal(outcome), rules,
                         review_status or ""))
        shown = f"{total} traces" + (f" (newest {TRACE_LIMIT} shown)" if total > TRACE_LIMIT else "")
        self.query_one("#trace-count", Static).update(shown)
        table = self.query_one("#traces-table", DataTable)
        if fill_table(table, rows):
            self.show_trace(selected_key(table))

    @on(DataTable.RowHighlighted, "#traces-table")
    def _trace_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_trace(event.row_key.value)

    def show_trace(self, trace_id: str | None) -> None:
        self.current_trace = trace_id
        conversation = self.query_one("#conversation", ConversationView)
        summary = self.query_one("#trace-summary", Static)
        trace = self.store.get("traces", trace_id) if trace_id else None
        if trace is None:
            summary.update("")
            conversation.show_messages(None)
            return
        messages, note = trace["messages"], None
        if module_available("appliance.curation.review"):
            from appliance.curation import review

            messages = review.current_messages(self.store, trace_id)
            if review.latest_edit(self.store, trace_id) is not None:
                note = "Showing the edited conversation; the recorded one is kept."
        summary.update(trace_summary(trace))
        conversation.show_messages(messages, note=note)

    # -- review actions ------------------------------------------------------------------------

    def _review_module(self):
        if not module_available("appliance.curation.review"):
            raise ReckonError("review is not available: appliance.curation is not installed")
        from appliance.curation import review

        return review

    def _selected_trace(self) -> str:
        trace_id = getattr(self, "current_trace", None)
        if not trace_id:
            raise ReckonError("no trace selected; select a trace in the list first")
        return trace_id

    def _review(self, action: str, **options) -> None:
        try:
            review = self._review_module()
            trace_id = self._selected_trace()
            row = getattr(review, action)(self.store, trace_id, **options)
        except ReckonError as error:
            self.report_error(error)
            return
        self.notify(f"trace {trace_id}: {row['action']} by {row['operator']}", markup=False)
        self.refresh_data()
        self.show_trace(trace_id)

    def action_accept(self) -> None:
        self._review("accept")

    def action_accept_override(self) -> None:
        self._review("accept", override=True)

    def action_reject(self) -> None:
        self._review("reject")

    def action_edit(self) -> None:
        try:
            self._review_module()
            trace_id = self._selected_trace()
        except ReckonError as error:
            self.report_error(error)
            return

        def edited(values: dict | None) -> None:
            if values is not None:
                self.save_edit(trace_id, values)

        self.app.push_screen(EditTraceModal(trace_id), edited)

    @work(thread=True, exclusive=True, group="review")
    def save_edit(self, trace_id: str, values: dict) -> None:
        """Run review.edit (it re-runs the tool and verifies) off the UI thread."""
        from appliance.curation import review

        store = self.reckon.workspace.store()
        try:
            row = review.edit(store, trace_id, pack=recorded_pack(store, trace_id), **values)
        except ReckonError as error:
            self.app.call_from_thread(self.report_error, error)
            return
        finally:
            store.close()
        verified = row["report"]["verified"]
        self.app.call_from_thread(
            self.notify, f"trace {trace_id} edited; edited trace verified: {verified}", markup=False)
        self.app.call_from_thread(self._after_edit, trace_id)

    def _after_edit(self, trace_id: str) -> None:
        self.refresh_data()
        self.show_trace(trace_id)


def recorded_pack(store, trace_id: str) -> str | None:
    """Return the pack folder the trace's run recorded, as `resume_run` loads it, or None."""
    trace = store.get("traces", trace_id)
    run = store.get("runs", trace["run_id"]) if trace else None
    config = (run or {}).get("config") or {}
    return config.get("pack_path") if isinstance(config, dict) else None


def trace_summary(trace: dict) -> Text:
    """Format the task request, outcome, rule verdicts with reasons, errors and review status."""
    text = Text()
    task = trace["task"] or {}
    text.append("task ", style="bold")
    text.append(literal(trace["task_id"]))
    text.append("  outcome ", style="bold")
    text.append(literal(trace["outcome"]))
    text.append("  tokens ", style="bold")
    text.append(f"{(trace['prompt_tokens'] or 0) + (trace['completion_tokens'] or 0)}")
    if trace["review_status"]:
        text.append("  review ", style="bold")
        text.append(literal(trace["review_status"]))
    if task.get("request"):
        text.append("\nrequest ", style="bold")
        text.append(literal(task["request"]))
    for rule_id, verdict in sorted((trace["rule_verdicts"] or {}).items()):
        passed = verdict.get("passed")
        mark, style = {True: ("pass", "green"), False: ("FAIL", "red")}.get(passed, ("n/a", "dim"))
        text.append("\n")
        text.append(f"{mark:<4} ", style=style)
        text.append(literal(rule_id))
        if verdict.get("reason"):
            text.append(": ")
            text.append(literal(verdict["reason"], "dim"))
    for error in trace["errors"] or []:
        text.append("\nerror ", style="red")
        text.append(literal(f"step {error.get('step')}: {error.get('kind')}: {error.get('message')}"))
    return text

