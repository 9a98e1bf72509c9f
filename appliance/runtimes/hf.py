"""transformers in process: a local HF folder or a GGUF file, optionally with a peft adapter.

This is the runtime for evaluating a base + adapter exactly as trained (before GGUF export).
`chat_batch` pads on the left and generates several conversations in one batch.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from appliance.errors import ConfigError
from appliance.models import folder_digest, load_causal_lm, load_tokenizer, resolve_base
from appliance.runtimes.base import (CompletionRuntime, ContextOverflow, Generation, Sampling)

log = logging.getLogger(__name__)


class TransformersRuntime(CompletionRuntime):
    kind = "hf"

    def __init__(self, model: str = "embedded", adapter: str | None = None,
                 dtype: str = "float32", context_length: int = 8192,
                 renderer_name: str | None = None, tool_style: str = "full", **_ignored):
        super().__init__(renderer_name=renderer_name, tool_style=tool_style)
        import torch

        self.base = resolve_base(model)
        self.adapter_path = Path(adapter) if adapter else None
        if self.adapter_path is not None and not (self.adapter_path / "adapter_config.json").is_file():
            raise ConfigError(f"adapter folder {str(self.adapter_path)!r} has no adapter_config.json")
        self.tokenizer = load_tokenizer(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model_obj = load_causal_lm(model, dtype=dtype)
        if self.adapter_path is not None:
            from peft import PeftModel

            model_obj = PeftModel.from_pretrained(model_obj, str(self.adapter_path))
        self.model = model_obj.eval()
        self.context_length = context_length
        self.end_ids = [self.tokenizer.convert_tokens_to_ids(self.renderer.end_of_turn),
                        self.tokenizer.eos_token_id]
        self._torch = torch
        self._lock = threading.Lock()

    def identity(self) -> dict:
        return {"kind": self.kind, "model": self.base.spec, "path": str(self.base.path),
                "weights_digest": self.base.digest,
                "adapter": str(self.adapter_path) if self.adapter_path else None,
                "adapter_digest": folder_digest(self.adapter_path) if self.adapter_path else None,
                "renderer": self.renderer.name, "tool_style": self.renderer.tool_style}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)

    def complete(self, prompt: str, sampling: Sampling) -> tuple[str, int, int, str]:
        text, prompt_tokens, completion_tokens, finish = self._generate([prompt], sampling)[0]
        return text, prompt_tokens, completion_tokens, finish

    def chat_batch(self, conversations, sampling: Sampling) -> list[Generation]:
        prompts = [self.renderer.render_prompt(messages, tools) for messages, tools in conversations]
        started = time.perf_counter()
        outputs = self._generate(prompts, sampling)
        latency = (time.perf_counter() - started) / max(1, len(prompts))
        return [Generation.from_text(text, self.renderer.parse(text), prompt_tokens=p,
                                     completion_tokens=c, latency_s=latency, finish_reason=f)
                for text, p, c, f in outputs]

    def _generate(self, prompts: list[str], sampling: Sampling):
        torch = self._torch
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True)
        lengths = encoded.attention_mask.sum(dim=1).tolist()
        longest = encoded.input_ids.shape[1]
        if longest + sampling.max_tokens > self.context_length:
            raise ContextOverflow(f"prompt of {longest} tokens plus max_tokens {sampling.max_tokens} "
                                  f"exceeds the context window of {self.context_length}",
                                  longest, self.context_length)
        options = dict(max_new_tokens=sampling.max_tokens, eos_token_id=self.end_ids,
                       pad_token_id=self.tokenizer.pad_token_id,
                       stop_strings=self.renderer.stop, tokenizer=self.tokenizer)
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            options.update(do_sample=False)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**encoded, **options)
        results = []
        for row, prompt_length in zip(output, lengths):
            new_tokens = row[longest:].tolist()
            finish = "length"
            for index, token in enumerate(new_tokens):
                if token in self.end_ids:
                    new_tokens = new_tokens[:index]
                    finish = "stop"
                    break
            new_tokens = [t for t in new_tokens if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(new_tokens, skip_special_tokens=False)
            for stop in self.renderer.stop:
                if stop in text:
                    text = text[:text.index(stop)]
                    finish = "stop"
            results.append((text, prompt_length, len(new_tokens), finish))
        return results
