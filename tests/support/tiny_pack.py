"""A tiny calculator pack for tests of the harness mechanics.

Tools: add (numbers), slow (sleeps past its timeout), broken (raises), answer (terminal)
and decline (terminal). One rule checks that the answer equals the sum that `add` returned.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

PACK_YAML = """
id: tiny
version: 0.1.0
description: Calculator pack for harness tests.
module: impl
setup: open_context
terminal_tools: [answer, decline]
task_checker: check_task
tools:
  - name: add
    description: Add two numbers.
    implementation: add
    timeout_s: 2
    parameters:
      type: object
      properties:
        a: {type: number}
        b: {type: number}
      required: [a, b]
      additionalProperties: false
  - name: slow
    description: Sleeps longer than its timeout.
    implementation: slow
    timeout_s: 0.2
    parameters: {type: object, properties: {}, additionalProperties: false}
  - name: broken
    description: Always fails.
    implementation: broken
    parameters: {type: object, properties: {}, additionalProperties: false}
  - name: answer
    description: Give the final answer.
    implementation: answer
    parameters:
      type: object
      properties:
        text: {type: string}
      required: [text]
      additionalProperties: false
  - name: decline
    description: Decline the request.
    implementation: decline
    parameters:
      type: object
      properties:
        reason: {type: string}
      required: [reason]
      additionalProperties: false
rules:
  - id: answer-from-sum
    text: State only sums that the add tool returned.
    checker: check_answer_from_sum
    critical: true
prompts:
  full: prompts/full.md
  compact: prompts/compact.md
tasks:
  - name: generated
    generator: generate_tasks
"""

IMPL = '''
import time
import threading

from appliance.packs import RuleVerdict, ToolError


class Context:
    def __init__(self, folder):
        self.folder = folder
        self.thread = threading.get_ident()


def open_context(folder):
    return Context(folder)


def add(ctx, a, b):
    return {"sum": a + b}


def slow(ctx):
    time.sleep(1.0)
    return {"done": True}


def broken(ctx):
    raise ToolError("the broken tool is broken")


def answer(ctx, text):
    return {"status": "delivered"}


def decline(ctx, reason):
    return {"status": "declined"}


def generate_tasks(n, seed):
    return [{"id": f"t-{seed}-{i}", "request": f"What is {i} + {seed + 1}?",
             "category": "sum", "expected": {"outcome": "answer", "sum": i + seed + 1}}
            for i in range(n)]


def check_answer_from_sum(view):
    finals = view.calls_named("answer")
    if not finals:
        return RuleVerdict(None, "no answer given")
    sums = [str(r.result.get("sum")) for r in view.calls_named("add") if r.result]
    text = finals[-1].call.arguments.get("text", "")
    if any(s in text for s in sums):
        return RuleVerdict(True, "answer states a looked-up sum")
    return RuleVerdict(False, f"answer {text!r} states no sum returned by add")


def check_task(view):
    expected = str(view.expected.get("sum"))
    finals = view.calls_named("answer")
    if finals and expected in finals[-1].call.arguments.get("text", ""):
        return RuleVerdict(True, "expected sum stated")
    return RuleVerdict(False, f"expected sum {expected} not stated")
'''


def write_tiny_pack(folder: Path) -> Path:
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    (folder / "pack.yaml").write_text(textwrap.dedent(PACK_YAML).lstrip())
    (folder / "impl.py").write_text(IMPL)
    (folder / "prompts" / "full.md").write_text("You add numbers with the add tool, then answer.")
    (folder / "prompts" / "compact.md").write_text("Add, then answer.")
    return folder
