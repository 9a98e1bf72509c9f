"""A trace shown as a conversation: one block per message, tool calls and results inline.

Every string comes from the model or a tool, so it is rendered as literal Text.
"""

from __future__ import annotations

import json

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.text import literal

ROLE_STYLES = {"system": "dim", "user": "bold cyan", "assistant": "bold green", "tool": "bold yellow"}


def _arguments_text(raw) -> str:
    if isinstance(raw, str):
        try:
            return json.dumps(json.loads(raw), ensure_ascii=False, sort_keys=True)
        except json.JSONDecodeError:
            return raw
    return json.dumps(raw, ensure_ascii=False, sort_keys=True)


def message_text(message: dict) -> Text:
    """Render one OpenAI chat message as Text (role line, content, tool calls)."""
    role = message.get("role", "?")
    text = Text()
    heading = role
    if role == "tool" and message.get("name"):
        heading = f"tool result: {message['name']}"
    text.append(heading, style=ROLE_STYLES.get(role, "bold"))
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if content:
        text.append("\n")
        text.append(literal(content))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text.append("\n→ ", style="green")
        text.append(str(function.get("name", "?")), style="bold green")
        text.append(literal(f"({_arguments_text(function.get('arguments', ''))})"))
    return text


class ConversationView(VerticalScroll):
    """Scrollable list of message blocks."""

    def show_messages(self, messages: list[dict] | None, *, note: str | None = None) -> None:
        self.remove_children()
        blocks = []
        if note:
            blocks.append(Static(literal(note, "italic"), classes="conversation-note"))
        for message in messages or []:
            role = message.get("role", "other")
            blocks.append(Static(message_text(message), classes=f"message message-{role}"))
        if not blocks:
            blocks.append(Static("Select a trace to read it.", classes="conversation-note"))
        self.mount_all(blocks)
        self.scroll_home(animate=False)
