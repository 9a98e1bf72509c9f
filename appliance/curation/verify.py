"""Trace verification: format, then execution, then policy.

Every trace gets a verdict: the stage where verification stopped, whether the trace is
verified, and the reasons it is not. Stages run in order and a stage runs only when the
previous one passed, because rule checkers may assume well-formed calls.

* format: the messages are well formed, and each call parses, names a tool of the pack and
  has arguments valid against that tool's JSON Schema. The harness recorded no format
  error (unparseable output, unknown tool, invalid arguments, wrong argument type).
* execution: every non-terminal call has a tool result that is not an error, the harness
  recorded no tool error or timeout, and the run finished (no step, token or context limit).
* policy: every rule checker of the pack passes, re-run here on the trace (stored
  verdicts may come from an older pack), and the pack's task checker accepts the outcome.

Verdicts go to the `trace_verdicts` table. A row is replaced only by a re-verification of
the same trace variant under the same pack digest, so no verdict of a rejected trace is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from appliance.chat import ArgumentsError, ToolCall
from appliance.packs import Pack, TraceView
from appliance.store import Store, dumps, now

STAGES = ("format", "execution", "policy")
COMPLETE = "complete"

FORMAT_ERROR_KINDS = {"unparseable_output", "unknown_tool", "invalid_arguments",
                      "wrong_argument_type"}
EXECUTION_ERROR_KINDS = {"tool_error", "timeout", "step_limit", "context_overflow",
                         "token_limit", "runtime_error"}
INCOMPLETE_OUTCOMES = {"step_limit", "token_limit", "context_overflow", "runtime_error",
                       "incomplete", "error", "timeout", "interrupted"}
ROLES = {"system", "user", "assistant", "tool"}
VALIDITY_CACHE_SIZE = 200_000

# The original trace; a review edit is verified as its own variant named by the edit id.
ORIGINAL = "original"
# The step-verified prefix of a trace that step-level rejection sampling stopped.
PREFIX = "prefix"


@dataclass
class Reason:
    stage: str
    code: str
    message: str
    step: int | None = None

    def to_dict(self) -> dict:
        return {"stage": self.stage, "code": self.code, "message": self.message,
                "step": self.step}


@dataclass
class Verdict:
    stage: str                       # the stage that failed, or "complete"
    verified: bool
    reasons: list[Reason] = field(default_factory=list)
    rules: dict[str, bool | None] = field(default_factory=dict)   # rule id -> passed

    def reasons_dicts(self) -> list[dict]:
        return [reason.to_dict() for reason in self.reasons]


class Verifier:
    """Verifies traces against one loaded pack. Cheap to reuse, so build it once per run."""

    def __init__(self, pack: Pack):
        self.pack = pack
        self.validators = {
            name: jsonschema.Draft202012Validator(tool.parameters)
            for name, tool in pack.tools.items()
        }
        self.terminal = set(pack.terminal_tools)
        self._parse_in_place = False
        # Validity by (tool, canonical arguments): enum-heavy schemas repeat arguments a
        # lot, and jsonschema validation is the costliest step of the format stage.
        self._valid: dict[tuple[str, str], bool] = {}

    def verify(self, task: Any, messages: Any, outcome: str | None,
               errors: Any = None, steps: Any = None, parse_in_place: bool = False) -> Verdict:
        """Verify one trace and return its verdict.

        With `parse_in_place`, JSON-string tool-call arguments in `messages` are replaced
        by the parsed objects, which saves later stages a parse. Pass it only for messages
        that the caller decoded for this call.
        """
        self._parse_in_place = parse_in_place
        failed = self._format_and_execution(task, messages, outcome, errors, steps)
        if failed is not None:
            return failed
        reasons, rules = self._policy(task, messages, outcome)
        if reasons:
            return Verdict("policy", False, reasons, rules)
        return Verdict(COMPLETE, True, [], rules)

    def verify_prefix(self, task: Any, messages: list[dict]) -> Verdict:
        """Verify the unfinished start of a trace: the decisions before a rejected step.

        Format and execution are checked as for a whole trace. Then no rule checker may fail
        on the prefix, and the pack's step checker must accept every call. The task checker
        is left out because the prefix has no final decision.
        """
        self._parse_in_place = False
        failed = self._format_and_execution(task, messages, PREFIX, None, None)
        if failed is not None:
            return failed
        view = TraceView(task, messages, None)
        verdicts = self.pack.verdicts(view)
        rules = {rule_id: verdict.get("passed") for rule_id, verdict in verdicts.items()
                 if rule_id != "task"}
        reasons = [Reason("policy", "rule_failed",
                          f"rule {rule_id}: {verdicts[rule_id].get('reason') or 'failed'}")
                   for rule_id, passed in rules.items() if passed is False]
        if self.pack.step_checker is None:
            reasons.append(Reason("policy", "no_step_checker",
                                  f"pack {self.pack.id} has no step_checker, so the steps of "
                                  "an unfinished trace cannot be checked"))
        else:
            for step, record in enumerate(view.calls):
                verdict = self.pack.step_checker(view, record)
                if verdict.passed is False:
                    reasons.append(Reason("policy", "step_failed",
                                          f"step {step}: {verdict.reason}", step))
        if reasons:
            return Verdict("policy", False, reasons, rules)
        return Verdict(COMPLETE, True, [], rules)

    def _format_and_execution(self, task: Any, messages: Any, outcome: str | None,
                              errors: Any, steps: Any) -> Verdict | None:
        """Run the first two stages; return the failing verdict, or None when both pass."""
        reasons = self._format(task, messages, errors, steps)
        if reasons:
            return Verdict("format", False, reasons)
        reasons = self._execution(messages, outcome, errors, steps)
        if reasons:
            return Verdict("execution", False, reasons)
        return None

    # -- format ---------------------------------------------------------------------------

    def _format(self, task: Any, messages: Any, errors: Any, steps: Any) -> list[Reason]:
        reasons: list[Reason] = []
        if not isinstance(task, dict):
            reasons.append(Reason("format", "malformed_task",
                                  f"task must be a JSON object, got {type(task).__name__}"))
        if not isinstance(messages, list) or not messages:
            reasons.append(Reason("format", "malformed_messages",
                                  "messages must be a non-empty JSON list"))
            return reasons

        step = 0
        seen_user = False
        last_role = None
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                role = message.get("role") if isinstance(message, dict) else type(message).__name__
                reasons.append(Reason("format", "malformed_messages",
                                      f"message {index} has role {role!r}; expected one of "
                                      f"{', '.join(sorted(ROLES))}"))
                continue
            role = message["role"]
            last_role = role
            if role == "user":
                seen_user = True
            if role != "assistant":
                continue
            reasons.extend(self._format_action(message, step))
            step += 1

        if not seen_user:
            reasons.append(Reason("format", "no_user_request",
                                  "the conversation has no user message to act on"))
        if step == 0:
            reasons.append(Reason("format", "no_assistant_action",
                                  "the conversation has no assistant message"))
        elif last_role not in ("assistant", "tool"):
            reasons.append(Reason("format", "no_final_decision",
                                  f"the conversation ends with a {last_role} message, "
                                  "not an assistant decision"))
        reasons.extend(_recorded_errors(errors, steps, FORMAT_ERROR_KINDS, "format"))
        return reasons

    def _format_action(self, message: dict, step: int) -> list[Reason]:
        reasons: list[Reason] = []
        calls = message.get("tool_calls") or []
        content = message.get("content")
        if not calls and not (isinstance(content, str) and content.strip()):
            return [Reason("format", "empty_action", f"step {step}: assistant message has "
                           "neither content nor tool calls", step)]
        if not isinstance(calls, list):
            return [Reason("format", "malformed_messages",
                           f"step {step}: tool_calls must be a list", step)]
        for position, raw in enumerate(calls):
            if not isinstance(raw, dict):
                reasons.append(Reason("format", "malformed_messages",
                                      f"step {step} call {position}: not an object", step))
                continue
            try:
                call = ToolCall.from_openai(raw)
            except ArgumentsError as error:
                reasons.append(Reason("format", "invalid_arguments",
                                      f"step {step} call {position}: {error}", step))
                continue
            function = raw.get("function", raw)
            arguments_text = function.get("arguments")
            # Later stages and checkers parse the arguments again, so the decoded
            # conversation keeps the parsed object. Both forms mean the same call.
            if self._parse_in_place and isinstance(arguments_text, str) \
                    and isinstance(function, dict):
                function["arguments"] = call.arguments
            validator = self.validators.get(call.name)
            if validator is None:
                reasons.append(Reason("format", "unknown_tool",
                                      f"step {step}: tool {call.name!r} is not in pack "
                                      f"{self.pack.id}", step))
                continue
            # is_valid is the fast path; the error walk runs only for invalid arguments.
            if not isinstance(arguments_text, str):
                arguments_text = json.dumps(call.arguments, sort_keys=True)
            cache_key = (call.name, arguments_text)
            valid = self._valid.get(cache_key)
            if valid is None:
                valid = validator.is_valid(call.arguments)
                if len(self._valid) >= VALIDITY_CACHE_SIZE:
                    self._valid.clear()
                self._valid[cache_key] = valid
            if valid:
                continue
            for error in sorted(validator.iter_errors(call.arguments), key=lambda e: list(e.path)):
                location = ".".join(str(part) for part in error.absolute_path) or "(arguments)"
                code = "wrong_argument_type" if error.validator == "type" else "invalid_arguments"
                reasons.append(Reason("format", code, f"step {step}: {call.name}: {location}: "
                                      f"{error.message}", step))
        return reasons

    # -- execution ------------------------------------------------------------------------

    def _execution(self, messages: list[dict], outcome: str | None, errors: Any,
                   steps: Any) -> list[Reason]:
        reasons: list[Reason] = []
        results = {message.get("tool_call_id"): message for message in messages
                   if message.get("role") == "tool"}
        step = 0
        for message in messages:
            if message.get("role") != "assistant":
                continue
            for raw in message.get("tool_calls") or []:
                name = raw.get("function", raw).get("name")
                result = results.get(raw.get("id"))
                if result is None:
                    if name not in self.terminal:
                        reasons.append(Reason("execution", "missing_tool_result",
                                              f"step {step}: call {raw.get('id')!r} to {name} "
                                              "has no tool result", step))
                    continue
                error = _result_error(result.get("content"))
                if error is not None:
                    reasons.append(Reason("execution", "tool_error",
                                          f"step {step}: {name} returned an error: {error}", step))
            step += 1
        if outcome is None or outcome == "":
            reasons.append(Reason("execution", "missing_outcome", "the trace has no outcome"))
        elif outcome in INCOMPLETE_OUTCOMES:
            reasons.append(Reason("execution", "run_incomplete",
                                  f"the run ended with outcome {outcome!r} instead of a decision"))
        reasons.extend(_recorded_errors(errors, steps, EXECUTION_ERROR_KINDS, "execution"))
        return reasons

    # -- policy ---------------------------------------------------------------------------

    def _policy(self, task: dict, messages: list[dict],
                outcome: str | None) -> tuple[list[Reason], dict[str, bool | None]]:
        reasons: list[Reason] = []
        verdicts = self.pack.verdicts(TraceView(task, messages, outcome))
        rules = {rule_id: verdict.get("passed") for rule_id, verdict in verdicts.items()}
        for rule_id, verdict in verdicts.items():
            if verdict.get("passed") is not False:
                continue
            if rule_id == "task":
                reasons.append(Reason("policy", "task_failed",
                                      f"task checker: {verdict.get('reason') or 'failed'}"))
            else:
                reasons.append(Reason("policy", "rule_failed",
                                      f"rule {rule_id}: {verdict.get('reason') or 'failed'}"))
        if self.pack.task_checker is None:
            reasons.append(Reason("policy", "no_task_checker",
                                  f"pack {self.pack.id} has no task_checker, so the expected "
                                  "outcome cannot be checked"))
        return reasons, rules


def step_verified_prefix(messages: list[dict], errors: Any) -> list[dict] | None:
    """Return the messages before the step that rejection sampling gave up on.

    The harness stops a trace when every candidate of step k fails the step verifier, and
    records a "step_rejected" error with that step. Each step before k passed the verifier.
    Returns None when there is no such error or no decision before step k.
    """
    rejected = [entry.get("step") for entry in errors or []
                if isinstance(entry, dict) and entry.get("kind") == "step_rejected"]
    if len(rejected) != 1 or not isinstance(rejected[0], int) or rejected[0] < 1:
        return None
    seen = 0
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            if seen == rejected[0]:
                return messages[:index]
            seen += 1
    return None


def _result_error(content: Any) -> str | None:
    """Return the error text of a tool result of the form {"error": ...}, else None."""
    if isinstance(content, str):
        stripped = content.strip()
        if not stripped.startswith("{") or '"error"' not in stripped:
            return None
        try:
            content = json.loads(stripped)
        except json.JSONDecodeError:
            return None
    if isinstance(content, dict) and set(content) == {"error"}:
        return str(content["error"])
    return None


def _recorded_errors(errors: Any, steps: Any, kinds: set[str], stage: str) -> list[Reason]:
    """Turn errors the harness recorded (trace errors and per-step errors) into reasons."""
    reasons: list[Reason] = []
    seen: set[tuple] = set()
    entries: list[tuple[Any, Any, Any]] = []
    for entry in errors or []:
        if isinstance(entry, dict):
            entries.append((entry.get("step"), entry.get("kind"), entry.get("message")))
    for index, step in enumerate(steps or []):
        if not isinstance(step, dict):
            continue
        number = step.get("index", index)
        step_errors = step.get("errors") if isinstance(step.get("errors"), list) else []
        if isinstance(step.get("error"), dict):
            step_errors = [step["error"], *step_errors]
        for error in step_errors:
            if isinstance(error, dict):
                entries.append((number, error.get("kind"), error.get("message")))
    for step, kind, message in entries:
        if kind not in kinds or (step, kind) in seen:
            continue
        seen.add((step, kind))
        reasons.append(Reason(stage, kind, f"step {step}: harness recorded {kind}: {message}",
                              step if isinstance(step, int) else None))
    return reasons


# -- storage ---------------------------------------------------------------------------------


def ensure_tables(store: Store) -> None:
    store.ensure_table("trace_verdicts", {
        "trace_id": str, "variant": str, "pack_digest": str, "stage": str,
        "verified": int, "reasons": str, "rules": str, "verified_at": float,
    }, pk=("trace_id", "variant", "pack_digest"), indexes=[["trace_id"], ["verified"]])


def verdict_row(trace_id: str, variant: str, pack_digest: str, verdict: Verdict,
                moment: float | None = None) -> tuple:
    return (trace_id, variant, pack_digest, verdict.stage, int(verdict.verified),
            dumps(verdict.reasons_dicts()), dumps(verdict.rules), moment or now())


def write_verdicts(store: Store, rows: list[tuple]) -> None:
    """Insert or replace verdict rows built by `verdict_row` in one transaction."""
    if not rows:
        return
    with store.transaction():
        store.db.conn.executemany(
            "insert or replace into trace_verdicts (trace_id, variant, pack_digest, stage, "
            "verified, reasons, rules, verified_at) values (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def latest_verdict(store: Store, trace_id: str, variant: str = ORIGINAL) -> dict | None:
    ensure_tables(store)
    row = store.db.execute(
        "select trace_id, variant, pack_digest, stage, verified, reasons, rules, verified_at "
        "from trace_verdicts where trace_id = ? and variant = ? order by verified_at desc "
        "limit 1", [trace_id, variant]).fetchone()
    if row is None:
        return None
    keys = ("trace_id", "variant", "pack_digest", "stage", "verified", "reasons", "rules",
            "verified_at")
    verdict = dict(zip(keys, row))
    verdict["verified"] = bool(verdict["verified"])
    verdict["reasons"] = json.loads(verdict["reasons"])
    verdict["rules"] = json.loads(verdict["rules"])
    return verdict
