"""Any OpenAI-compatible server: llama.cpp's server, vLLM, llama-cpp-python's server.

api="chat" sends /v1/chat/completions with tools and reads native tool calls (arguments as
a JSON string), falling back to calls written as text. api="completions" renders the
appliance's own prompt format and sends /v1/completions, for base models and for serving
the specialist exactly as it was trained.
"""

from __future__ import annotations

import logging
import time

from appliance.chat import ArgumentsError, ToolCall, normalise_message
from appliance.formats import parse_text_tool_calls
from appliance.netguard import check_endpoint
from appliance.runtimes.base import (CompletionRuntime, ContextOverflow, Generation,
                                     RuntimeFailure, Sampling)

log = logging.getLogger(__name__)


class OpenAICompatRuntime(CompletionRuntime):
    kind = "openai"
    concurrent = True

    def __init__(self, model: str, base_url: str, api: str = "chat", api_key: str = "none",
                 timeout_s: float = 300.0, context_length: int | None = None,
                 renderer_name: str | None = None, tool_style: str = "full", **_ignored):
        super().__init__(renderer_name=renderer_name, tool_style=tool_style)
        import openai

        self.model = model
        self.base_url = check_endpoint(base_url, setting="openai base URL")
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {api!r}")
        self.api = api
        self.context_length = context_length
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout_s,
                                     max_retries=1)
        self._errors = (openai.APIError, openai.APIConnectionError, openai.APITimeoutError)

    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url,
                "api": self.api, "weights_digest": None, "renderer": self.renderer.name
                if self.api == "completions" else "server-chat-template"}

    def complete(self, prompt: str, sampling: Sampling) -> tuple[str, int, int, str]:
        try:
            response = self._client.completions.create(
                model=self.model, prompt=prompt, max_tokens=sampling.max_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                stop=self.renderer.stop)
        except self._errors as error:
            raise _classify(error) from None
        choice = response.choices[0]
        usage = response.usage
        return (choice.text or "", usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0, choice.finish_reason or "stop")

    @property
    def supports_prefix(self) -> bool:
        return self.api == "completions"

    def chat(self, messages: list[dict], tools: list[dict], sampling: Sampling,
             prefix: str | None = None, arguments_schema: dict | None = None) -> Generation:
        if self.api == "completions":
            generation = super().chat(messages, tools, sampling, prefix, arguments_schema)
            expected = _estimate_tokens(self.renderer.render_prompt(messages, tools))
            _check_truncation(generation.prompt_tokens, expected)
            return generation
        if prefix:
            raise ValueError("a prefix needs api='completions'; chat servers apply their own template")
        started = time.perf_counter()
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=[normalise_message(m) for m in messages],
                tools=tools or None, max_tokens=sampling.max_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed)
        except self._errors as error:
            raise _classify(error) from None
        latency = time.perf_counter() - started
        choice = response.choices[0]
        message = choice.message
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        _check_truncation(prompt_tokens, _estimate_tokens(
            "".join(str(m.get("content") or "") for m in messages)))
        fields = dict(prompt_tokens=prompt_tokens,
                      completion_tokens=usage.completion_tokens if usage else 0,
                      latency_s=latency, finish_reason=choice.finish_reason or "stop")
        if message.tool_calls:
            calls, error = [], None
            for raw in message.tool_calls:
                try:
                    calls.append(ToolCall.from_openai(raw.model_dump()))
                except ArgumentsError as exc:
                    error = f"tool {raw.function.name!r}: {exc}"
            return Generation(text=message.content or "", tool_calls=calls, content=message.content,
                              parse_error=error, native_tool_calls=True, **fields)
        text = message.content or ""
        return Generation.from_text(text, parse_text_tool_calls(text), **fields)


def _estimate_tokens(text: str) -> int:
    # NOTE: a server's tokenizer is unknown here; 1 token per 4 characters is a lower-bound
    # estimate for English and JSON, so only truncation by a wide margin is flagged.
    return len(text) // 4


def _check_truncation(backend_prompt_tokens: int, estimated: int) -> None:
    if backend_prompt_tokens and estimated and backend_prompt_tokens < estimated // 2:
        raise ContextOverflow(
            f"server reported {backend_prompt_tokens} prompt tokens for a prompt estimated at "
            f"{estimated}+ tokens: it truncated the context", backend_prompt_tokens)


def _classify(error: Exception) -> Exception:
    text = str(error)
    if "context" in text.lower() and ("exceed" in text.lower() or "length" in text.lower()):
        return ContextOverflow(f"server rejected the prompt as too long: {text}")
    return RuntimeFailure(f"OpenAI-compatible server failed: {type(error).__name__}: {text}")
