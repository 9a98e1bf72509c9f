"""llama.cpp in process (llama-cpp-python): the embedded default runtime.

One Llama object serves one conversation at a time (a lock serialises calls), and reuses
its KV cache for the longest common prompt prefix, so each agent step only evaluates the
new turns. The GGUF LoRA that ships in a bundle loads with `lora`.

`chat_batch` decodes several conversations together in a second llama.cpp context with
n_seq_max sequences, created on first use (see BatchDecoder). Each llama_decode call
takes one token of every unfinished sequence, so the weights are read once per step
for the whole group.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from pathlib import Path

from appliance.errors import ConfigError
from appliance.models import embedded_gguf_path, file_digest
from appliance.runtimes.base import (CompletionRuntime, ContextOverflow, Generation,
                                     RuntimeFailure, Sampling)

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192
# Sequences decoded together by chat_batch; longer lists are split into groups this size.
MAX_BATCH_SEQUENCES = 16
# Tokens per llama_decode call while the batch context evaluates prompts.
PREFILL_BATCH_TOKENS = 512
# The min_p that Llama.create_completion applies by default; seeded sampling in chat_batch
# uses it too so that both paths build the same sampler chain.
COMPLETION_MIN_P = 0.05
# The repeat-penalty window of Llama (its last_n_tokens_size default).
PENALTY_LAST_N = 64


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
        self._grammars: dict = {}
        self._llm = Llama(model_path=str(self.model_path),
                          lora_path=str(self.lora_path) if self.lora_path else None,
                          n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, seed=0, flash_attn=True, verbose=False)
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

    supports_constraints = True

    def grammar_for(self, arguments_schema: dict):
        """GBNF grammar for ' {arguments}}</tool_call>' after a guided prefix (cached)."""
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        key = json.dumps(arguments_schema, sort_keys=True)
        if key not in self._grammars:
            # NOTE: string "pattern"s are dropped because llama-cpp-python 0.3.36 converts
            # regex classes such as \d into literal text; the harness still validates
            # every argument against the full schema afterwards.
            schema = _without_patterns(arguments_schema)
            rules = json_schema_to_gbnf(json.dumps(schema)).replace("root ::=", "arguments ::=")
            text = 'root ::= " " arguments "}</tool_call>"\n' + rules
            self._grammars[key] = LlamaGrammar.from_string(text, verbose=False)
        return self._grammars[key]

    def complete(self, prompt: str, sampling: Sampling,
                 arguments_schema: dict | None = None) -> tuple[str, int, int, str]:
        tokens = self.tokenize(prompt)
        if len(tokens) + sampling.max_tokens > self.context_length:
            raise ContextOverflow(
                f"prompt of {len(tokens)} tokens plus max_tokens {sampling.max_tokens} exceeds "
                f"the context window of {self.context_length}",
                prompt_tokens=len(tokens), context_length=self.context_length)
        with self._lock:
            try:
                grammar = self.grammar_for(arguments_schema) if arguments_schema else None
                result = self._llm.create_completion(
                    tokens, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                    top_p=sampling.top_p, top_k=sampling.top_k, seed=sampling.seed,
                    repeat_penalty=sampling.repeat_penalty,
                    stop=[] if grammar is not None else self.renderer.stop, grammar=grammar)
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

    def chat_batch(self, conversations: list[tuple[list[dict], list[dict]]],
                   sampling: Sampling) -> list[Generation]:
        """Generate for several conversations, decoding up to MAX_BATCH_SEQUENCES together.

        Greedy decoding (temperature 0) picks the same tokens as `chat` except at near
        ties: ggml's multi-row CPU kernels sum in another order than its one-row kernel,
        so logits can differ in the last digits. Sampled decoding seeds each sequence's
        sampler with `sampling.seed`. Raises ContextOverflow when any prompt plus
        max_tokens exceeds the context window.
        """
        if not conversations:
            return []
        prompts = [self.renderer.render_prompt(messages, tools) for messages, tools in conversations]
        token_lists = [self.tokenize(prompt) for prompt in prompts]
        for tokens in token_lists:
            if len(tokens) + sampling.max_tokens > self.context_length:
                raise ContextOverflow(
                    f"prompt of {len(tokens)} tokens plus max_tokens {sampling.max_tokens} "
                    f"exceeds the context window of {self.context_length}",
                    prompt_tokens=len(tokens), context_length=self.context_length)

        generations: list[Generation] = []
        with self._lock:
            for start in range(0, len(token_lists), MAX_BATCH_SEQUENCES):
                group = token_lists[start:start + MAX_BATCH_SEQUENCES]
                decoder = self._batch_decoder(len(group), kv_cells_needed(group, sampling.max_tokens))
                for tokens, (text, completion_tokens, finish, latency) in zip(
                        group, decoder.generate(group, sampling, self.renderer.stop)):
                    generations.append(Generation.from_text(
                        text, self.renderer.parse(text), prompt_tokens=len(tokens),
                        completion_tokens=completion_tokens, latency_s=latency,
                        finish_reason=finish))
        return generations

    def _batch_decoder(self, n_sequences: int, kv_cells: int) -> "BatchDecoder":
        """Return the batch context, recreated only when it is too small for this group."""
        decoder = getattr(self, "_decoder", None)
        if decoder is not None and decoder.fits(n_sequences, kv_cells):
            return decoder
        if decoder is not None:
            decoder.close()
        # Headroom so that a slightly longer group next time reuses the context.
        cells = -(-int(kv_cells * 1.25) // 256) * 256
        self._decoder = BatchDecoder(self._llm, self._llm.context_params,
                                     max(n_sequences, getattr(decoder, "n_sequences", 0)), cells)
        return self._decoder

    def close(self) -> None:
        decoder, self._decoder = getattr(self, "_decoder", None), None
        if decoder is not None:
            decoder.close()
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


def common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens all prompts share, leaving each prompt at least one token of its own."""
    length = min(len(prompt) for prompt in prompts) - 1
    for prompt in prompts[1:]:
        length = min(length, common_prefix_length(prompts[0], prompt))
    return max(length, 0)


def kv_cells_needed(prompts: list[list[int]], max_tokens: int) -> int:
    """KV cells a group needs when the shared prefix is stored once."""
    prefix = shared_prefix_length(prompts)
    return prefix + sum(len(prompt) - prefix + max_tokens for prompt in prompts)


class BatchDecoder:
    """A llama.cpp context with several sequences that are decoded in one batch per step.

    The context shares the model weights (and LoRA adapter) of the Llama object. Its KV
    cache is unified (kv_unified on). The prompts' shared prefix, usually the system prompt
    with the tool listing, is evaluated once into a reserved cache sequence and kept
    between calls like Llama's own prefix cache. llama_memory_seq_cp then gives it to every
    sequence by tagging the same cells with more sequence ids.

    NOTE: attention settings follow the Llama context (flash attention on, full-size SWA
    cache), so both paths compute alike. With a long shared prompt the per-row attention
    over that cache dominates a CPU step, and batching then gains little. A window-sized
    SWA cache would cut that cost, but it breaks the prefix reuse between calls.
    """

    def __init__(self, llm, base_params, n_sequences: int, kv_cells: int):
        import llama_cpp

        self._api = llama_cpp
        self._llm = llm
        self.n_sequences = n_sequences
        self.kv_cells = kv_cells
        self._prefix_sequence = n_sequences          # the reserved cache sequence
        self._cached_prefix: list[int] = []
        params = type(base_params).from_buffer_copy(base_params)
        params.n_seq_max = n_sequences + 1
        params.n_ctx = kv_cells
        params.n_batch = max(PREFILL_BATCH_TOKENS, n_sequences)
        params.n_ubatch = params.n_batch
        params.kv_unified = True
        self._ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self._ctx:
            raise RuntimeFailure(f"llama.cpp could not create a context for {n_sequences} "
                                 f"sequences and {kv_cells} KV cells")
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
                self.close()
                raise RuntimeFailure("llama.cpp could not apply the LoRA adapter to the batch context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._batch_capacity = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._batch_capacity, 0, 1)
        log.info("llama.cpp batch context: %d sequences, %d KV cells", n_sequences, kv_cells)

    def fits(self, n_sequences: int, kv_cells: int) -> bool:
        return n_sequences <= self.n_sequences and kv_cells <= self.kv_cells

    def _evaluate(self, entries: list[tuple[int, int, int, bool]], on_logits) -> None:
        """Decode (sequence, position, token, wants_logits) entries in capacity-sized batches."""
        for offset in range(0, len(entries), self._batch_capacity):
            chunk = entries[offset:offset + self._batch_capacity]
            for index, (sequence, position, token, logits) in enumerate(chunk):
                self._add(index, token, position, sequence, logits)
            self._decode(len(chunk))
            for index, (sequence, _, _, logits) in enumerate(chunk):
                if logits:
                    on_logits(sequence, index)

    def _load_prefix(self, prefix: list[int]) -> None:
        """Bring the cache sequence to exactly `prefix`, evaluating only what is new."""
        api = self._api
        keep = common_prefix_length(self._cached_prefix, prefix)
        # Drop everything from `keep` on, including cells of an evaluation that failed halfway.
        if not api.llama_memory_seq_rm(self._memory, self._prefix_sequence, keep, -1):
            api.llama_memory_seq_rm(self._memory, self._prefix_sequence, -1, -1)
            keep = 0
        self._cached_prefix = []
        self._evaluate([(self._prefix_sequence, position, prefix[position], False)
                        for position in range(keep, len(prefix))], None)
        self._cached_prefix = list(prefix)

    def _sampler(self, sampling: Sampling):
        """Build the sampler chain that Llama.create_completion builds for these settings."""
        api = self._api
        chain = api.llama_sampler_chain_init(api.llama_sampler_chain_default_params())
        if sampling.repeat_penalty != 1.0:
            # NOTE: the penalty window covers generated tokens only; Llama also counts the
            # prompt's last tokens, so outputs differ from `chat` when repeat_penalty != 1.
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_penalties(
                PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0))
        if sampling.temperature == 0.0:
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_greedy())
        else:
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_top_k(sampling.top_k))
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_typical(1.0, 1))
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_top_p(sampling.top_p, 1))
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_min_p(COMPLETION_MIN_P, 1))
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_temp(sampling.temperature))
            api.llama_sampler_chain_add(chain, api.llama_sampler_init_dist(sampling.seed))
        return chain

    def _add(self, index: int, token: int, position: int, sequence: int, logits: bool) -> None:
        batch = self._batch
        batch.token[index] = token
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = sequence
        batch.logits[index] = logits

    def _decode(self, n_tokens: int) -> None:
        self._batch.n_tokens = n_tokens
        status = self._api.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise RuntimeFailure(f"llama_decode failed with status {status} on a batch of "
                                 f"{n_tokens} tokens")

    def generate(self, prompts: list[list[int]], sampling: Sampling,
                 stop: list[str]) -> list[tuple[str, int, str, float]]:
        """Return (text, completion tokens, finish reason, seconds) per prompt, in order."""
        api = self._api
        started = time.perf_counter()
        count = len(prompts)
        for sequence in range(self.n_sequences):
            api.llama_memory_seq_rm(self._memory, sequence, -1, -1)
        prefix_length = shared_prefix_length(prompts)
        self._load_prefix(prompts[0][:prefix_length])
        for sequence in range(count):
            api.llama_memory_seq_cp(self._memory, self._prefix_sequence, sequence, -1, -1)
        samplers = [self._sampler(sampling) for _ in range(count)]
        generated: list[list[int]] = [[] for _ in range(count)]
        texts = [""] * count
        finish = ["length"] * count
        latency = [0.0] * count
        pending: dict[int, int] = {}          # sequence -> its next token to decode

        def accept(sequence: int, batch_index: int) -> None:
            # llama_sampler_sample also accepts the token (repeat penalties see it).
            token = api.llama_sampler_sample(samplers[sequence], self._ctx, batch_index)
            done = api.llama_vocab_is_eog(self._vocab, token)
            if not done:
                generated[sequence].append(token)
                text = self._llm.detokenize(generated[sequence]).decode("utf-8", errors="ignore")
                cut = min((text.find(marker) for marker in stop if marker in text), default=-1)
                if cut >= 0:
                    texts[sequence] = text[:cut]
                    done = True
                else:
                    texts[sequence] = text
            if done:
                finish[sequence] = "stop"
            elif len(generated[sequence]) >= sampling.max_tokens:
                done = True
            if done:
                latency[sequence] = time.perf_counter() - started
            else:
                pending[sequence] = token

        try:
            # Prompt evaluation after the shared prefix: all suffixes packed into batches;
            # only the last token of each prompt requests logits.
            entries = [(sequence, position, tokens[position], position == len(tokens) - 1
                        and sampling.max_tokens > 0)
                       for sequence, tokens in enumerate(prompts)
                       for position in range(prefix_length, len(tokens))]
            self._evaluate(entries, accept)

            # Generation: one token of every unfinished sequence per llama_decode call.
            while pending:
                order = sorted(pending)
                for index, sequence in enumerate(order):
                    position = len(prompts[sequence]) + len(generated[sequence]) - 1
                    self._add(index, pending.pop(sequence), position, sequence, True)
                self._decode(len(order))
                for index, sequence in enumerate(order):
                    accept(sequence, index)
        finally:
            for chain in samplers:
                api.llama_sampler_free(chain)
        return [(texts[i], len(generated[i]), finish[i], latency[i]) for i in range(count)]

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._api.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            self._api.llama_free(self._ctx)
            self._ctx = None


def _without_patterns(schema):
    if isinstance(schema, dict):
        return {key: _without_patterns(value) for key, value in schema.items()
                if not (key in ("pattern", "format") and isinstance(value, str))}
    if isinstance(schema, list):
        return [_without_patterns(item) for item in schema]
    return schema
