"""Messages and tool calls in the OpenAI chat format, and their one internal shape.

Traces, datasets and eval cases all store messages as OpenAI chat messages:

    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_0", "type": "function",
                     "function": {"name": "lookup_rate", "arguments": "{\\"award\\": ...}"}}]}
    {"role": "tool", "tool_call_id": "call_0", "name": "lookup_rate", "content": "{...}"}

Backends differ in how they give arguments (Ollama: an object; OpenAI: a JSON string);
`ToolCall.from_openai` accepts both, and `canonical_arguments` renders both identically:
sorted keys, literal UTF-8, no whitespace variation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ArgumentsError(ValueError):
    """Tool-call arguments that are not a JSON object."""


def canonical_json(value: Any) -> str:
    """Serialise with sorted keys and literal UTF-8; the form used in prompts and hashes."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def parse_arguments(arguments: Any) -> dict:
    """Return tool-call arguments as a dict, whether given as an object or a JSON string."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ArgumentsError(f"arguments are not valid JSON: {error.msg} at char {error.pos}")
        if not isinstance(value, dict):
            raise ArgumentsError(f"arguments must be a JSON object, got {type(value).__name__}")
        return value
    raise ArgumentsError(f"arguments must be an object or a JSON string, got {type(arguments).__name__}")


def canonical_arguments(arguments: Any) -> str:
    return canonical_json(parse_arguments(arguments))


@dataclass
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)
    id: str | None = None

    @classmethod
    def from_openai(cls, call: dict) -> "ToolCall":
        """Build from an OpenAI or Ollama tool call; raises ArgumentsError on bad arguments."""
        function = call.get("function", call)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ArgumentsError("tool call has no function name")
        return cls(name=name, arguments=parse_arguments(function.get("arguments")),
                   id=call.get("id"))

    def to_openai(self, call_id: str | None = None) -> dict:
        return {"id": call_id or self.id or "call_0", "type": "function",
                "function": {"name": self.name, "arguments": canonical_json(self.arguments)}}

    def to_text(self) -> str:
        """Render the call as the specialist format writes it: one line, the name first.

        The name comes before the arguments so that a model decides which tool to call
        before it writes arguments, and the arguments' keys are sorted.
        """
        arguments = canonical_json(self.arguments)
        return f'{{"name": {json.dumps(self.name, ensure_ascii=False)}, "arguments": {arguments}}}'


def assistant_message(tool_calls: list[ToolCall], content: str | None = None,
                      step: int = 0) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [call.to_openai(f"call_{step}_{index}")
                                 for index, call in enumerate(tool_calls)]
    return message


def tool_message(call_id: str, name: str, content: Any) -> dict:
    text = content if isinstance(content, str) else canonical_json(content)
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": text}


def message_tool_calls(message: dict) -> list[ToolCall]:
    """Return the tool calls of an assistant message (raises ArgumentsError on bad ones)."""
    return [ToolCall.from_openai(call) for call in message.get("tool_calls") or []]


def normalise_message(message: dict) -> dict:
    """Return a copy whose tool-call arguments are canonical JSON strings."""
    copy = dict(message)
    if copy.get("tool_calls"):
        copy["tool_calls"] = [
            {"id": call.get("id"), "type": "function",
             "function": {"name": call.get("function", call).get("name"),
                          "arguments": canonical_arguments(call.get("function", call).get("arguments"))}}
            for call in copy["tool_calls"]
        ]
    return copy
