"""Trace rows for curation tests, built with the real entitlements pack.

`TraceFactory` plays the teacher: it writes the assistant's tool calls, runs the pack's real
tool implementations for the results (a ToolError becomes {"error": ...} as in the
harness), computes the stored rule verdicts with the pack's checkers, and inserts runs
and traces through Store exactly as the harness does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from appliance.chat import ToolCall, assistant_message, tool_message
from appliance.packs import Pack, ToolError, TraceView, load_pack
from appliance.store import Store, now

ENTITLEMENTS = "entitlements"


def entitlements() -> Pack:
    return load_pack(ENTITLEMENTS)


def copy_pack(destination: Path, evalset_lines: list[dict] | None = None) -> Path:
    """Copy the entitlements pack to `destination`, optionally with another eval set."""
    import shutil

    source = entitlements().path
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    if evalset_lines is not None:
        (destination / "eval" / "heldout.jsonl").write_text(
            "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in evalset_lines),
            encoding="utf-8")
    return destination


class TraceFactory:
    def __init__(self, store: Store, pack: Pack | None = None, run_id: str = "run-test-1"):
        self.store = store
        self.pack = pack or entitlements()
        self.context = self.pack.make_context()
        self.run_id = run_id
        self.count = 0
        self.ensure_run(run_id)

    def ensure_run(self, run_id: str) -> None:
        if self.store.get("runs", run_id) is None:
            self.store.insert("runs", {
                "id": run_id, "pack_id": self.pack.id, "pack_version": self.pack.version,
                "pack_digest": self.pack.digest, "teacher": {"kind": "fixture"},
                "sampling": {}, "config": {}, "tools": self.pack.openai_tools(),
                "status": "completed", "created_at": now(), "updated_at": now(),
                "n_tasks": 0, "n_samples": 1, "n_traces": 0})

    # -- conversations -------------------------------------------------------------------------

    def execute(self, name: str, arguments: dict) -> dict:
        tool = self.pack.tools[name]
        try:
            value = tool.function(self.context, **arguments)
        except ToolError as error:
            return {"error": str(error)}
        return value if isinstance(value, dict) else {"result": value}

    def conversation(self, request: str, calls: list[tuple[str, dict]],
                     system: str | None = None, run_tools: bool = True) -> list[dict]:
        """Build messages for a sequence of (tool name, arguments), one call per step."""
        messages = [{"role": "system", "content": system or self.pack.prompts["full"]},
                    {"role": "user", "content": request}]
        for step, (name, arguments) in enumerate(calls):
            message = assistant_message([ToolCall(name, arguments)], None, step)
            messages.append(message)
            call_id = message["tool_calls"][0]["id"]
            result = self.execute(name, arguments) if run_tools and name in self.pack.tools \
                else {"error": f"unknown tool {name!r}"}
            messages.append(tool_message(call_id, name, result))
        return messages

    def insert(self, task: dict, messages: list[dict], *, outcome: str = "answer",
               errors: list[dict] | None = None, sample_index: int = 0,
               run_id: str | None = None, trace_id: str | None = None,
               rule_verdicts: dict | None = None, steps: list[dict] | None = None) -> str:
        run_id = run_id or self.run_id
        self.ensure_run(run_id)
        self.count += 1
        trace_id = trace_id or f"tr-{run_id}-{self.count:05d}"
        if rule_verdicts is None:
            rule_verdicts = self.pack.verdicts(TraceView(task, messages, outcome))
        assistant_steps = sum(1 for m in messages if m.get("role") == "assistant")
        self.store.insert("traces", {
            "id": trace_id, "run_id": run_id, "task_id": task["id"],
            "sample_index": sample_index, "pack_id": self.pack.id,
            "pack_version": self.pack.version, "pack_digest": self.pack.digest,
            "task": task, "messages": messages, "tools": self.pack.openai_tools(),
            "steps": steps if steps is not None else [
                {"index": i, "prompt_tokens": 100, "completion_tokens": 20, "latency_s": 0.1,
                 "raw_output": "", "error": None} for i in range(assistant_steps)],
            "outcome": outcome, "errors": errors or [], "rule_verdicts": rule_verdicts,
            "prompt_tokens": 100, "completion_tokens": 20, "latency_s": 0.1,
            "source": "harness", "created_at": now()})
        return trace_id

    # -- correct traces for generated tasks -----------------------------------------------------

    def rate_calls(self, rate: dict, answer: str | None = None) -> list[tuple[str, dict]]:
        arguments = {"award": rate["award"], "classification": rate["classification"],
                     "rate_type": rate["rate_type"]}
        if rate.get("requested_date"):
            arguments["effective_date"] = rate["requested_date"]
        value = rate["value"]
        text = answer or f"The {rate['rate_type'].replace('_', ' ')} is {value:g} ({rate['unit']})."
        return [("lookup_rate", arguments), ("final_answer", {"answer": text, "citations": []})]

    def correct_calls(self, task: dict) -> list[tuple[str, dict]] | None:
        expected = task["expected"]
        if expected["outcome"] == "refuse":
            return [("refuse", {"reason": "This desk only answers workplace entitlement questions.",
                                "category": expected["refusal_category"]})]
        if expected["outcome"] == "escalate":
            return [("escalate_to_officer", {"reason": "dismissal" if expected["dismissal"]
                                             else "underpayment over $500",
                                             "summary": "Enquirer reports a matter for an officer."})]
        if expected["outcome"] == "answer" and expected.get("rate") and not expected.get("passage_ids"):
            return self.rate_calls(expected["rate"])
        return None

    def correct_trace(self, task: dict, **insert_options) -> str:
        calls = self.correct_calls(task)
        if calls is None:
            raise ValueError(f"no scripted answer for task category {task.get('category')}")
        outcome = {"refuse": "refuse", "escalate": "escalate"}.get(task["expected"]["outcome"],
                                                                   "answer")
        return self.insert(task, self.conversation(task["request"], calls),
                           outcome=outcome, **insert_options)


def scriptable_tasks(n: int, seed: int = 3) -> list[dict]:
    """Generated entitlements tasks that TraceFactory can answer correctly."""
    pack = entitlements()
    factory_probe = TraceFactory.__new__(TraceFactory)
    tasks = []
    for task in pack.tasks(n * 4, seed=seed):
        if TraceFactory.correct_calls(factory_probe, task) is not None:
            tasks.append(copy.deepcopy(task))
        if len(tasks) == n:
            break
    return tasks


def rate_task(task_id: str, request: str, *, award: str = "Coastal Hospitality Award",
              classification: str = "Level 1", rate_type: str = "base_hourly") -> dict:
    """A rate-lookup task with its expected rate taken from the pack's own rates table."""
    pack = entitlements()
    rate = pack.module.expected_rate(award, classification, rate_type, None)
    return {"id": task_id, "request": request, "category": "rate_lookup",
            "expected": pack.module.expected_block("answer", ["lookup_rate", "final_answer"],
                                                   rate)}
