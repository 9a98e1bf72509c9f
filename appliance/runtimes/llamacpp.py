"""llama.cpp in process (llama-cpp-python): the embedded default runtime.

One Llama object serves one conversation at a time (a lock serialises calls), and reuses
its KV cache for the longest common prompt prefix, so each agent step only evaluates the
new turns. The GGUF LoRA that ships in a bundle loads with `lora`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.errors import ConfigError
from appliance.models import embedded_gguf_path, file_digest
from appliance.runtimes.base import CompletionRuntime, ContextOverflow, RuntimeFailure, Sampling

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192


class LlamaCppRuntime(CompletionRuntime):
    kind = "llamacpp"

    def __init__(self, model: str = "embedded", lora: str | None = None,
                 n_ctx: int = DEFAULT_CONTEXT, n_threads: int | None = None,
                 renderer_name: str | None = None, tool_style: str = "full", **_ignored):
        super().__init__(renderer_name=renderer_name, tool_style=tool_style)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError("llama-cpp-python is not installed; run ./install.sh") from None
        self.model_path = embedded_gguf_path() if model == "embedded" else Path(model)
        if not self.model_path.is_file():
            raise ConfigError(f"llamacpp model {str(self.model_path)!r} not found; give a .gguf file")
        self.lora_path = Path(lora) if lora else None
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ConfigError(f"llamacpp LoRA {str(self.lora_path)!r} not found; give a GGUF LoRA file")
        self.model_spec = model
        self.context_length = n_ctx
        threads = n_threads or int(os.environ.get("RECKON_THREADS", 0)) or max(1, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._llm = Llama(model_path=str(self.model_path),
                          lora_path=str(self.lora_path) if self.lora_path else None,
                          n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, seed=0, verbose=False)
        log.info("llama.cpp loaded %s (lora=%s, n_ctx=%d, threads=%d)",
                 self.model_path.name, self.lora_path, n_ctx, threads)

    def identity(self) -> dict:
        return {
            "kind": self.kind, "model": self.model_spec, "path": str(self.model_path),
            "weights_digest": file_digest(self.model_path),
            "adapter": str(self.lora_path) if self.lora_path else None,
            "adapter_digest": file_digest(self.lora_path) if self.lora_path else None,
            "renderer": self.renderer.name, "tool_style": self.renderer.tool_style,
        }

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def complete(self, prompt: str, sampling: Sampling) -> tuple[str, int, int, str]:
        tokens = self.tokenize(prompt)
        if len(tokens) + sampling.max_tokens > self.context_length:
            raise ContextOverflow(
                f"prompt of {len(tokens)} tokens plus max_tokens {sampling.max_tokens} exceeds "
                f"the context window of {self.context_length}",
                prompt_tokens=len(tokens), context_length=self.context_length)
        with self._lock:
            try:
                result = self._llm.create_completion(
                    tokens, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                    top_p=sampling.top_p, top_k=sampling.top_k, seed=sampling.seed,
                    repeat_penalty=sampling.repeat_penalty, stop=self.renderer.stop)
            except ValueError as error:
                if "context" in str(error).lower():
                    raise ContextOverflow(str(error), len(tokens), self.context_length) from None
                raise RuntimeFailure(f"llama.cpp failed: {error}") from error
        choice = result["choices"][0]
        usage = result.get("usage", {})
        backend_prompt = usage.get("prompt_tokens", len(tokens))
        if backend_prompt < len(tokens):
            raise ContextOverflow(
                f"backend evaluated {backend_prompt} prompt tokens, expected {len(tokens)}: "
                "the prompt was truncated", backend_prompt, self.context_length)
        return (choice["text"], backend_prompt, usage.get("completion_tokens", 0),
                choice.get("finish_reason") or "stop")

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()
