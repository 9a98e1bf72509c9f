"""Prompt formats: how a conversation with tools becomes text for a completion model.

The embedded Gemma 3 270M is a base model without a chat template, so the appliance
supplies one, the *specialist format* (name: "reckon-specialist-v1"). Harness, curation,
training, eval and serving must all render through the same `Renderer`; datasets, eval
results and bundles record `renderer.name` so a mismatch is detectable.

The format is a plain transcript, because a base model continues a transcript from a few
demonstrations (the pack's full prompt shows some in this exact form), and a fine-tuned
adapter learns it in a few hundred steps:

    {system prompt}
    # Tools
    {tool listing}

    User: {request}
    Model: <tool_call>{"name": "lookup_rate", "arguments": {...}}</tool_call><end_of_turn>
    Tool: {"name": "lookup_rate", "result": ...}
    Model:

Each model turn ends with Gemma's <end_of_turn> token, which training supervises as the
end of the action. The generation prompt ends with "Model:", a token boundary: a prompt
that ends in a space makes this base model emit digits. Generation stops at </tool_call>,
<end_of_turn> or the start of another transcript line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from appliance.chat import ArgumentsError, ToolCall, canonical_json, parse_arguments

END = "<end_of_turn>"
USER = "User:"
MODEL = "Model:"
TOOL = "Tool:"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


@dataclass
class ParsedOutput:
    """A model's raw text output, parsed."""

    tool_calls: list[ToolCall] = field(default_factory=list)
    content: str | None = None
    error: str | None = None        # why the output is unparseable, else None


@dataclass
class Rendered:
    """Rendered text plus the character spans the model is trained to produce."""

    text: str
    supervised_spans: list[tuple[int, int]]


def tool_listing(tools: list[dict], style: str) -> str:
    """List tools for the system turn. style: "full" (JSON Schemas), "compact" or "none"."""
    if style == "none" or not tools:
        return ""
    lines = []
    for tool in tools:
        function = tool.get("function", tool)
        if style == "full":
            lines.append(canonical_json({"name": function["name"],
                                         "description": function.get("description", ""),
                                         "parameters": function.get("parameters", {})}))
        elif style == "compact":
            parameters = function.get("parameters", {})
            required = set(parameters.get("required", []))
            names = [name if name in required else f"{name}?"
                     for name in parameters.get("properties", {})]
            lines.append(f"{function['name']}({', '.join(names)})")
        else:
            raise ValueError(f"unknown tool listing style {style!r}; use full, compact or none")
    return "\n".join(lines)


class SpecialistRenderer:
    """The appliance's own prompt format for models without a tool-capable chat template."""

    name = "reckon-specialist-v1"
    # Stopping at the call's closing tag keeps a base model from writing an imagined tool
    # result after its call. The packs ask for one call per turn.
    stop = [CALL_CLOSE, END, "\nUser:", "\nTool:", "\nModel:"]
    end_of_turn = END

    def __init__(self, tool_style: str = "full"):
        self.tool_style = tool_style

    # -- rendering --------------------------------------------------------------------------

    def render_action(self, message: dict) -> str:
        """Render an assistant message body (without the turn markers)."""
        calls = message.get("tool_calls") or []
        parts = []
        content = message.get("content")
        if content:
            parts.append(content)
        for call in calls:
            parsed = ToolCall.from_openai(call)
            parts.append(f"{CALL_OPEN}{parsed.to_text()}{CALL_CLOSE}")
        return "\n".join(parts)

    def render_tool_result(self, message: dict) -> str:
        content = message.get("content")
        try:
            value = json.loads(content) if isinstance(content, str) else content
        except json.JSONDecodeError:
            value = content
        return canonical_json({"name": message.get("name"), "result": value})

    def render(self, messages: list[dict], tools: list[dict],
               add_generation_prompt: bool = False) -> Rendered:
        """Render a conversation; spans cover each assistant action plus its end marker."""
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        length = 0

        def append(text: str, supervised: bool = False) -> None:
            nonlocal length
            if supervised:
                spans.append((length, length + len(text)))
            pieces.append(text)
            length += len(text)

        system_text = ""
        rest = messages
        if messages and messages[0].get("role") == "system":
            system_text = messages[0].get("content") or ""
            rest = messages[1:]
        listing = tool_listing(tools, self.tool_style)
        if listing:
            system_text = f"{system_text}\n# Tools\n{listing}" if system_text else f"# Tools\n{listing}"
        if system_text:
            append(f"{system_text}\n\n")

        for message in rest:
            role = message.get("role")
            if role == "user":
                append(f"{USER} {message.get('content') or ''}\n")
            elif role == "assistant":
                append(MODEL)
                append(" " + self.render_action(message) + END, supervised=True)
                append("\n")
            elif role == "tool":
                append(f"{TOOL} {self.render_tool_result(message)}\n")
            elif role == "system":
                append(f"{message.get('content') or ''}\n")
            else:
                raise ValueError(f"message role {role!r} is not one of system, user, assistant, tool")
        if add_generation_prompt:
            append(MODEL)
        return Rendered("".join(pieces), spans)

    def render_prompt(self, messages: list[dict], tools: list[dict]) -> str:
        return self.render(messages, tools, add_generation_prompt=True).text

    # -- parsing ----------------------------------------------------------------------------

    def parse(self, text: str) -> ParsedOutput:
        if CALL_OPEN in text and CALL_CLOSE not in text.split(CALL_OPEN)[-1]:
            text = text + CALL_CLOSE      # the stop sequence is not part of the output
        return parse_text_tool_calls(text)


_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CALL_CLOSE) + r"|$)",
                         re.DOTALL)
_FENCE = re.compile(r"```(?:json|tool_call)?\s*(\{.*?\})\s*```", re.DOTALL)


def parse_text_tool_calls(text: str) -> ParsedOutput:
    """Parse tool calls that a model wrote as text.

    Accepted forms, in order: <tool_call>{json}</tool_call> blocks (one or more), a fenced
    ```json block, or a bare JSON object, each with "name" and "arguments" (or "parameters").
    Text with none of these is returned as content with no calls. Text that tries one of
    them and fails to parse is returned with `error` set.
    """
    raw = text.split(END, 1)[0].strip()
    if not raw:
        return ParsedOutput(error="empty output")
    candidates: list[str] = []
    prose = raw
    if CALL_OPEN in raw:
        candidates = [match.group(1) for match in _CALL_BLOCK.finditer(raw)]
        prose = raw[: raw.index(CALL_OPEN)].strip()
    else:
        fenced = _FENCE.findall(raw)
        if fenced:
            candidates = fenced
            prose = raw[: raw.index("```")].strip()
        elif raw.lstrip().startswith("{"):
            candidates = [_first_json_object(raw) or raw]
            prose = ""
    if not candidates:
        return ParsedOutput(content=raw)

    calls = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError as error:
            return ParsedOutput(content=prose or None,
                                error=f"tool call is not valid JSON: {error.msg} at char {error.pos}")
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return ParsedOutput(content=prose or None,
                                error="tool call JSON has no string field 'name'")
        arguments = value.get("arguments", value.get("parameters", {}))
        try:
            calls.append(ToolCall(name=value["name"], arguments=parse_arguments(arguments)))
        except ArgumentsError as error:
            return ParsedOutput(content=prose or None, error=f"tool {value['name']!r}: {error}")
    return ParsedOutput(tool_calls=calls, content=prose or None)


def _first_json_object(text: str) -> str | None:
    """Return the first balanced {...} in text (string-aware), or None."""
    depth = 0
    in_string = False
    escaped = False
    start = text.find("{")
    if start < 0:
        return None
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index + 1]
    return None


RENDERERS = {SpecialistRenderer.name: SpecialistRenderer}


def get_renderer(name: str = SpecialistRenderer.name, **options: Any) -> SpecialistRenderer:
    if name not in RENDERERS:
        raise ValueError(f"unknown renderer {name!r}; known: {', '.join(RENDERERS)}")
    return RENDERERS[name](**options)
