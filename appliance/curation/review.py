"""Human review of traces: accept, reject or edit, with who and when.

Reviews are rows in `trace_reviews`; the trace row itself is never changed apart from its
`review_status` column. An edit stores the original message beside the edited one and the
full edited conversation, and is re-verified at once under its own variant (the review
id) in `trace_verdicts`.

How curation reads reviews (the latest review of a trace decides, edits accumulate):
* reject always excludes the trace;
* accept includes it when its verdict passed; a failed verdict is overridden only when the
  accept was given with `override=True`;
* edit replaces the conversation with the edited one, which must pass verification unless
  a later accept overrides it.
"""

from __future__ import annotations

import copy
import getpass
import json
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

from appliance.chat import ToolCall
from appliance.errors import NotFoundError, ReckonError
from appliance.packs import Pack, load_pack
from appliance.store import Store, now
from appliance.curation import verify

log = logging.getLogger(__name__)

ACTIONS = ("accept", "reject", "edit")


def ensure_tables(store: Store) -> None:
    store.ensure_table("trace_reviews", {
        "id": str, "trace_id": str, "action": str, "operator": str, "time": float,
        "override": int, "note": str,
        "original": str,      # JSON: {"message_index", "message"} before the edit
        "edit": str,          # JSON: {"message_index", "message", "messages"} after it
        "report": str,        # JSON: verdict of the edited conversation
    }, indexes=[["trace_id", "time"]])
    verify.ensure_tables(store)


def default_operator() -> str:
    return os.environ.get("USER") or getpass.getuser()


def _trace(store: Store, trace_id: str) -> dict:
    trace = store.get("traces", trace_id)
    if trace is None:
        raise NotFoundError(f"trace {trace_id!r} not found; `reckon traces list` shows trace ids")
    return trace


def _review_id() -> str:
    return f"rev-{now():.0f}-{uuid.uuid4().hex[:8]}"


def _record(store: Store, trace_id: str, action: str, operator: str | None, note: str | None,
            override: bool = False, original: Any = None, edit: Any = None,
            report: Any = None) -> dict:
    row = {"id": _review_id(), "trace_id": trace_id, "action": action,
           "operator": operator or default_operator(), "time": now(), "override": int(override),
           "note": note, "original": original, "edit": edit, "report": report}
    status = {"accept": "accepted", "reject": "rejected", "edit": "edited"}[action]
    with store.transaction():
        store.insert("trace_reviews", row)
        store.update("traces", trace_id, {"review_status": status})
    log.info("trace %s %s by %s (review %s)", trace_id, status, row["operator"], row["id"])
    return row


def accept(store: Store, trace_id: str, *, override: bool = False, operator: str | None = None,
           note: str | None = None) -> dict:
    """Accept a trace; `override` also includes it when its verdict failed."""
    ensure_tables(store)
    _trace(store, trace_id)
    return _record(store, trace_id, "accept", operator, note, override=override)


def reject(store: Store, trace_id: str, *, operator: str | None = None,
           note: str | None = None) -> dict:
    ensure_tables(store)
    _trace(store, trace_id)
    return _record(store, trace_id, "reject", operator, note)


def current_messages(store: Store, trace_id: str) -> list[dict]:
    """Return the conversation after the latest edit, or the recorded one."""
    ensure_tables(store)
    trace = _trace(store, trace_id)
    latest = latest_edit(store, trace_id)
    return latest["edit"]["messages"] if latest else trace["messages"]


def latest_edit(store: Store, trace_id: str) -> dict | None:
    ensure_tables(store)
    rows = list(store.rows("trace_reviews", "trace_id = ? and action = 'edit'", [trace_id],
                           order_by="time desc, rowid desc", limit=1))
    return rows[0] if rows else None


def _assistant_indices(messages: list[dict]) -> list[int]:
    return [index for index, message in enumerate(messages) if message.get("role") == "assistant"]


def edit(store: Store, trace_id: str, *, step: int | None = None, call_index: int = 0,
         arguments: dict | None = None, answer: str | None = None, pack: Pack | str | None = None,
         operator: str | None = None, note: str | None = None) -> dict:
    """Fix one tool call's arguments (step, call_index, arguments) or the final answer.

    `step` counts assistant messages from 0. The edited conversation is verified against
    the pack (the trace's own pack when none is given) and the verdict is stored.
    """
    ensure_tables(store)
    trace = _trace(store, trace_id)
    if (arguments is None) == (answer is None):
        raise ReckonError("give either new arguments (with --step) or a new final answer")
    messages = copy.deepcopy(current_messages(store, trace_id))
    actions = _assistant_indices(messages)
    if not actions:
        raise ReckonError(f"trace {trace_id} has no assistant message to edit")

    if arguments is not None:
        if not isinstance(arguments, dict):
            raise ReckonError("arguments must be a JSON object")
        if step is None or not 0 <= step < len(actions):
            raise ReckonError(f"step {step} is out of range: trace {trace_id} has "
                              f"{len(actions)} assistant steps (0 to {len(actions) - 1})")
        index = actions[step]
        calls = messages[index].get("tool_calls") or []
        if not 0 <= call_index < len(calls):
            raise ReckonError(f"step {step} has {len(calls)} tool calls; call index "
                              f"{call_index} does not exist")
        original = copy.deepcopy(messages[index])
        function = calls[call_index].setdefault("function", {})
        function["arguments"] = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
        # The recorded result belongs to the old arguments, so the tool runs again.
        _rerun_tool(messages, calls[call_index], _resolve_pack(trace, pack))
    else:
        index = actions[-1]
        original = copy.deepcopy(messages[index])
        _set_final_answer(messages[index], answer, _resolve_pack(trace, pack))

    pack_object = _resolve_pack(trace, pack)
    review_id = _review_id()
    verdict = verify.Verifier(pack_object).verify(trace["task"], messages, trace["outcome"])
    verify.write_verdicts(store, [verify.verdict_row(trace_id, review_id, pack_object.digest,
                                                     verdict)])
    row = {"id": review_id, "trace_id": trace_id, "action": "edit",
           "operator": operator or default_operator(), "time": now(), "override": 0,
           "note": note, "original": {"message_index": index, "message": original},
           "edit": {"message_index": index, "message": messages[index], "messages": messages},
           "report": {"verified": verdict.verified, "stage": verdict.stage,
                      "reasons": verdict.reasons_dicts(), "pack_digest": pack_object.digest}}
    with store.transaction():
        store.insert("trace_reviews", row)
        store.update("traces", trace_id, {"review_status": "edited"})
    log.info("trace %s edited by %s (review %s): verified=%s", trace_id, row["operator"],
             review_id, verdict.verified)
    return row


def _rerun_tool(messages: list[dict], call: dict, pack: Pack) -> None:
    """Replace the tool result of `call` with the result of running the pack's tool again.

    NOTE: later assistant steps were recorded against the old result; verification
    checks the edited conversation as a whole, but nothing re-runs the model.
    """
    from appliance.chat import canonical_json
    from appliance.packs import ToolError

    parsed = ToolCall.from_openai(call)
    tool = pack.tools.get(parsed.name)
    if tool is None:
        return
    try:
        value = tool.function(pack.make_context(), **parsed.arguments)
        value = value if isinstance(value, dict) else {"result": value}
    except ToolError as error:
        value = {"error": str(error)}
    except TypeError as error:
        value = {"error": f"{type(error).__name__}: {error}"}
    for message in messages:
        if message.get("role") == "tool" and message.get("tool_call_id") == call.get("id"):
            message["content"] = canonical_json(value)


def _set_final_answer(message: dict, answer: str, pack: Pack) -> None:
    """Replace the answer of the final decision: plain content or a terminal tool's "answer"."""
    calls = message.get("tool_calls") or []
    if not calls:
        message["content"] = answer
        return
    call = ToolCall.from_openai(calls[-1])
    tool = pack.tools.get(call.name)
    properties = (tool.parameters.get("properties") or {}) if tool else {}
    if call.name not in pack.terminal_tools or "answer" not in properties:
        raise ReckonError(f"the final decision calls {call.name}, which has no 'answer' "
                          "argument; edit its arguments with --step and --arguments instead")
    arguments = dict(call.arguments)
    arguments["answer"] = answer
    calls[-1].setdefault("function", {})["arguments"] = json.dumps(
        arguments, ensure_ascii=False, sort_keys=True)


def _resolve_pack(trace: dict, pack: Pack | str | None) -> Pack:
    if isinstance(pack, Pack):
        return pack
    return load_pack(pack or trace["pack_id"])


@dataclass
class Decision:
    """The effect of a trace's reviews on curation."""

    status: str                        # accepted | rejected | edited
    override: bool                     # an accept that overrides a failed verdict
    edit_id: str | None                # the review id of the edit in force
    messages: list[dict] | None        # the edited conversation, if any


def decisions(store: Store, trace_ids: set[str] | None = None) -> dict[str, Decision]:
    """Return the review decision of every reviewed trace (or of `trace_ids`)."""
    ensure_tables(store)
    result: dict[str, Decision] = {}
    for row in store.rows("trace_reviews", order_by="time, rowid"):
        trace_id = row["trace_id"]
        if trace_ids is not None and trace_id not in trace_ids:
            continue
        decision = result.get(trace_id) or Decision("accepted", False, None, None)
        if row["action"] == "edit":
            decision = Decision("edited", False, row["id"], row["edit"]["messages"])
        elif row["action"] == "accept":
            decision = Decision("accepted", bool(row["override"]), decision.edit_id,
                                decision.messages)
        else:
            decision = Decision("rejected", False, decision.edit_id, decision.messages)
        result[trace_id] = decision
    return result


def history(store: Store, trace_id: str) -> list[dict]:
    ensure_tables(store)
    _trace(store, trace_id)
    return list(store.rows("trace_reviews", "trace_id = ?", [trace_id], order_by="time, rowid"))
