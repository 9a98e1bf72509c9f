"""Model runtimes behind one interface (see base.Runtime).

Teacher and eval specs are short strings, parsed by `parse_spec`:

    embedded                                the Gemma 3 270M GGUF in process (llama.cpp)
    llamacpp:/models/x.gguf[+lora=/a.gguf]  any GGUF in process, optionally with a GGUF LoRA
    ollama:qwen2.5:3b[@http://127.0.0.1:11434]
    openai:MODEL@http://127.0.0.1:8080/v1[#completions]
    hf:embedded | hf:/path/to/folder-or.gguf[+adapter=/path/to/peft-adapter]

Server endpoints pass appliance.netguard.check_endpoint: loopback or RECKON_ALLOWED_HOSTS.
"""

from __future__ import annotations

from appliance.errors import ConfigError
from appliance.runtimes.base import (ContextOverflow, Generation, Runtime, RuntimeFailure,
                                     Sampling)

__all__ = ["ContextOverflow", "Generation", "Runtime", "RuntimeFailure", "Sampling",
           "parse_spec", "make_runtime"]

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


def parse_spec(spec: str) -> dict:
    """Turn a runtime spec string into a config dict (kind, model, options)."""
    if not spec:
        raise ConfigError("runtime spec is empty; use e.g. 'embedded' or 'ollama:qwen2.5:3b'")
    if spec == "embedded":
        return {"kind": "llamacpp", "model": "embedded"}
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ConfigError(f"runtime spec {spec!r} needs KIND:MODEL, e.g. llamacpp:/models/x.gguf")
    if kind == "llamacpp":
        model, _, options = rest.partition("+lora=")
        return {"kind": "llamacpp", "model": model, "lora": options or None}
    if kind == "hf":
        model, _, adapter = rest.partition("+adapter=")
        return {"kind": "hf", "model": model, "adapter": adapter or None}
    if kind == "ollama":
        model, _, url = rest.partition("@")
        return {"kind": "ollama", "model": model, "base_url": url or DEFAULT_OLLAMA_URL}
    if kind == "openai":
        model, _, url = rest.partition("@")
        if not url:
            raise ConfigError(f"runtime spec {spec!r} needs a server URL: openai:MODEL@http://127.0.0.1:8080/v1")
        url, _, api = url.partition("#")
        return {"kind": "openai", "model": model, "base_url": url, "api": api or "chat"}
    raise ConfigError(
        f"unknown runtime kind {kind!r} in {spec!r}; use embedded, llamacpp, hf, ollama or openai"
    )


def make_runtime(config: dict | str, **overrides) -> Runtime:
    """Build a runtime from a spec string or config dict."""
    if isinstance(config, str):
        config = parse_spec(config)
    config = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    kind = config.get("kind")
    if kind == "llamacpp":
        from appliance.runtimes.llamacpp import LlamaCppRuntime
        return LlamaCppRuntime(**_without(config, "kind"))
    if kind == "hf":
        from appliance.runtimes.hf import TransformersRuntime
        return TransformersRuntime(**_without(config, "kind"))
    if kind == "ollama":
        from appliance.runtimes.ollama import OllamaRuntime
        return OllamaRuntime(**_without(config, "kind"))
    if kind == "openai":
        from appliance.runtimes.openai_compat import OpenAICompatRuntime
        return OpenAICompatRuntime(**_without(config, "kind"))
    raise ConfigError(f"unknown runtime kind {kind!r}")


def _without(config: dict, *keys: str) -> dict:
    return {k: v for k, v in config.items() if k not in keys}
