"""Ollama through the `ollama` Python client (native /api/chat with tools).

Ollama returns tool-call arguments as objects and counts tokens in prompt_eval_count and
eval_count. It silently truncates prompts longer than num_ctx, so the prompt token count is
compared with our own estimate to detect that.
"""

from __future__ import annotations

import json
import time

from appliance.chat import ArgumentsError, ToolCall, parse_arguments
from appliance.formats import parse_text_tool_calls
from appliance.netguard import check_endpoint
from appliance.runtimes.base import ContextOverflow, Generation, Runtime, RuntimeFailure, Sampling


class OllamaRuntime(Runtime):
    kind = "ollama"
    concurrent = True

    def __init__(self, model: str, base_url: str, num_ctx: int = 8192, timeout_s: float = 300.0,
                 **_ignored):
        super().__init__()
        import ollama

        self.model = model
        self.base_url = check_endpoint(base_url, setting="ollama URL")
        self.context_length = num_ctx
        self._client = ollama.Client(host=self.base_url, timeout=timeout_s)
        self._errors = (ollama.ResponseError, ollama.RequestError, ConnectionError, OSError)

    def identity(self) -> dict:
        digest = None
        try:
            details = self._client.show(self.model)
            digest = getattr(details, "digest", None) or (details.get("digest") if isinstance(details, dict) else None)
        except Exception:  # noqa: BLE001 - identity is best effort; the model name is kept
            pass
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url,
                "weights_digest": digest, "renderer": "ollama-template"}

    def chat(self, messages: list[dict], tools: list[dict], sampling: Sampling,
             prefix: str | None = None, arguments_schema: dict | None = None) -> Generation:
        if prefix:
            raise ValueError("Ollama's /api/chat cannot start the reply with a prefix")
        started = time.perf_counter()
        try:
            response = self._client.chat(
                model=self.model, messages=[_to_ollama(m) for m in messages], tools=tools or None,
                stream=False,
                options={"temperature": sampling.temperature, "top_p": sampling.top_p,
                         "seed": sampling.seed, "num_predict": sampling.max_tokens,
                         "num_ctx": self.context_length})
        except self._errors as error:
            raise RuntimeFailure(f"ollama at {self.base_url} failed: {error}") from None
        latency = time.perf_counter() - started
        data = response.model_dump() if hasattr(response, "model_dump") else dict(response)
        message = data.get("message") or {}
        prompt_tokens = data.get("prompt_eval_count") or 0
        estimated = sum(len(str(m.get("content") or "")) for m in messages) // 4
        if prompt_tokens and prompt_tokens < estimated // 2:
            raise ContextOverflow(
                f"ollama evaluated {prompt_tokens} prompt tokens for a prompt estimated at "
                f"{estimated}+ tokens: it truncated the context (num_ctx={self.context_length})",
                prompt_tokens, self.context_length)
        fields = dict(prompt_tokens=prompt_tokens, completion_tokens=data.get("eval_count") or 0,
                      latency_s=latency,
                      finish_reason="length" if data.get("done_reason") == "length" else "stop")
        raw_calls = message.get("tool_calls") or []
        if raw_calls:
            calls, error = [], None
            for raw in raw_calls:
                function = raw.get("function") or {}
                try:
                    calls.append(ToolCall(function.get("name") or "",
                                          parse_arguments(function.get("arguments"))))
                except ArgumentsError as exc:
                    error = f"tool {function.get('name')!r}: {exc}"
            return Generation(text=message.get("content") or "", tool_calls=calls,
                              content=message.get("content") or None, parse_error=error,
                              native_tool_calls=True, **fields)
        text = message.get("content") or ""
        return Generation.from_text(text, parse_text_tool_calls(text), **fields)


def _to_ollama(message: dict) -> dict:
    """Ollama wants tool-call arguments as objects, not JSON strings."""
    converted = {"role": message["role"], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        converted["tool_calls"] = [
            {"function": {"name": call["function"]["name"],
                          "arguments": parse_arguments(call["function"].get("arguments"))}}
            for call in message["tool_calls"]]
    if message["role"] == "tool":
        converted["tool_name"] = message.get("name")
        if not isinstance(converted["content"], str):
            converted["content"] = json.dumps(converted["content"], ensure_ascii=False)
    return converted
