"""Splitting: traces into one example per decision, and tasks into train and validation.

A decision is an assistant message that follows a user request; the final answer is one
too. Its example is the prefix (system, history) plus that message as the target.
An assistant message before the first user message (a greeting, an imported conversation
that opens with the model) stays in the history of later decisions but is not a target,
because nothing was asked yet.

Train and validation are split by task, never by example, so every decision and every
sample of one task lands on the same side. The side is a deterministic hash of the task id.
"""

from __future__ import annotations

import hashlib

from appliance.chat import ArgumentsError, ToolCall

TEXT_ACTION = "(text)"
VALIDATION = "validation"
TRAIN = "train"


def decision_indices(messages: list[dict]) -> list[int]:
    """Return the index of every assistant message that follows a user message."""
    indices = []
    seen_user = False
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "user":
            seen_user = True
        elif role == "assistant" and seen_user:
            indices.append(index)
    return indices


def action_tool(message: dict) -> str:
    """Name the action of an assistant message: its first tool, or "(text)" for plain text."""
    for raw in message.get("tool_calls") or []:
        try:
            return ToolCall.from_openai(raw).name
        except ArgumentsError:
            return str(raw.get("function", raw).get("name"))
    return TEXT_ACTION


def example_messages(messages: list[dict], index: int) -> list[dict]:
    """Return the example of the decision at `index`: its prefix, ending with the target."""
    if messages[index].get("role") != "assistant":
        raise ValueError(f"message {index} is a {messages[index].get('role')} message, "
                         "not an assistant decision")
    return messages[: index + 1]


def split_of(task_id: str, validation_fraction: float, seed: str = "") -> str:
    """Return "train" or "validation" for a task; stable across runs and machines."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation fraction {validation_fraction} must be in [0, 1)")
    digest = hashlib.sha256(f"{seed}\x1f{task_id}".encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2 ** 64
    return VALIDATION if position < validation_fraction else TRAIN
