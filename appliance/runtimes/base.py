"""The runtime interface every teacher and evaluated model implements.

`Runtime.chat(messages, tools, sampling)` takes OpenAI chat messages and tools and returns a
Generation with the tool calls already in the internal shape (appliance.chat.ToolCall):
native calls from servers that support them, calls parsed from text otherwise. Completion
runtimes (llama.cpp, transformers) render the conversation with a Renderer from
appliance.formats, so harness, eval and serving share one prompt format.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.chat import ToolCall
from appliance.formats import ParsedOutput, SpecialistRenderer, get_renderer


class RuntimeFailure(Exception):
    """The backend failed to produce a completion (server error, timeout, crash)."""


class ContextOverflow(Exception):
    """The prompt does not fit the context window, or the backend truncated it silently."""

    def __init__(self, message: str, prompt_tokens: int | None = None,
                 context_length: int | None = None):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int = 0
    repeat_penalty: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "Sampling":
        values = values or {}
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class Generation:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    content: str | None = None
    parse_error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"          # stop | length
    native_tool_calls: bool = False

    @classmethod
    def from_text(cls, text: str, parsed: ParsedOutput, **fields: Any) -> "Generation":
        return cls(text=text, tool_calls=parsed.tool_calls, content=parsed.content,
                   parse_error=parsed.error, **fields)


class Runtime:
    """Base class. Subclasses implement `chat` and `identity`."""

    kind = "abstract"
    #: the largest prompt + completion the backend accepts, when known
    context_length: int | None = None
    #: whether several conversations may be sent at once (server backends)
    concurrent = False
    #: whether chat() accepts a `prefix` that starts the assistant action
    supports_prefix = False
    #: whether chat() accepts `arguments_schema` to constrain decoding after the prefix
    supports_constraints = False

    def __init__(self, renderer: SpecialistRenderer | None = None, renderer_name: str | None = None,
                 tool_style: str = "full"):
        self.renderer = renderer or get_renderer(renderer_name or SpecialistRenderer.name,
                                                 tool_style=tool_style)

    def identity(self) -> dict:
        raise NotImplementedError

    def chat(self, messages: list[dict], tools: list[dict], sampling: Sampling,
             prefix: str | None = None, arguments_schema: dict | None = None) -> Generation:
        """Generate the next assistant action.

        `prefix` starts the action with given text (it must end at a token boundary); only
        completion runtimes support it, and the returned text includes it. With a prefix
        that ends after '"arguments":', `arguments_schema` constrains the rest of the call
        to a JSON object valid for that schema (runtimes with supports_constraints).
        """
        raise NotImplementedError

    def chat_batch(self, conversations: list[tuple[list[dict], list[dict]]],
                   sampling: Sampling) -> list[Generation]:
        """Generate for several conversations; runtimes with real batching override this."""
        return [self.chat(messages, tools, sampling) for messages, tools in conversations]

    def count_tokens(self, text: str) -> int | None:
        """Return the backend's token count for `text`, or None when it cannot tell."""
        return None

    def close(self) -> None:
        pass


class CompletionRuntime(Runtime):
    """A runtime that completes raw text: renders the chat, then parses the output."""

    def complete(self, prompt: str, sampling: Sampling,
                 arguments_schema: dict | None = None) -> tuple[str, int, int, str]:
        """Return (text, prompt_tokens, completion_tokens, finish_reason)."""
        raise NotImplementedError

    supports_prefix = True

    def chat(self, messages: list[dict], tools: list[dict], sampling: Sampling,
             prefix: str | None = None, arguments_schema: dict | None = None) -> Generation:
        prompt = self.renderer.render_prompt(messages, tools) + (prefix or "")
        started = time.perf_counter()
        if arguments_schema is not None and self.supports_constraints:
            text, prompt_tokens, completion_tokens, finish = self.complete(
                prompt, sampling, arguments_schema=arguments_schema)
        else:
            text, prompt_tokens, completion_tokens, finish = self.complete(prompt, sampling)
        text = (prefix or "") + text
        parsed = self.renderer.parse(text)
        return Generation.from_text(text, parsed, prompt_tokens=prompt_tokens,
                                    completion_tokens=completion_tokens,
                                    latency_s=time.perf_counter() - started,
                                    finish_reason=finish)
