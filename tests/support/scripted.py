"""A runtime that replays scripted text outputs through the real parser.

It stands in for a model only in tests of the loop's failure handling, where the point is
to feed the harness exact outputs (a malformed call, an unknown tool); the real embedded
model runs in the slow tests.
"""

from __future__ import annotations

import threading

from appliance.runtimes.base import (CompletionRuntime, ContextOverflow, RuntimeFailure,
                                     Sampling)


class ScriptedRuntime(CompletionRuntime):
    kind = "scripted"

    def __init__(self, outputs, *, concurrent: bool = False, overflow_at: int | None = None):
        super().__init__()
        self.outputs = list(outputs)
        self.concurrent = concurrent
        self.overflow_at = overflow_at
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def identity(self) -> dict:
        return {"kind": self.kind, "model": "script", "weights_digest": None}

    def complete(self, prompt: str, sampling: Sampling):
        with self._lock:
            self.prompts.append(prompt)
            index = len(self.prompts) - 1
        if self.overflow_at is not None and index >= self.overflow_at:
            raise ContextOverflow("prompt too long for the scripted context", 9999, 100)
        output = self.outputs[index % len(self.outputs)] if self.outputs else ""
        if isinstance(output, Exception):
            raise output
        return output, len(prompt) // 4, len(output) // 4, "stop"


def call(name: str, **arguments) -> str:
    from appliance.chat import ToolCall

    return f"<tool_call>{ToolCall(name, arguments).to_text()}</tool_call>"


__all__ = ["ScriptedRuntime", "call", "RuntimeFailure"]
