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
                decoder = self._batch_decoder(len(group), group, sampling.max_tokens)
                for tokens, (text, completion_tokens, finish, latency) in zip(
                        group, decoder.generate(group, sampling, self.renderer.stop)):
                    generations.append(Generation.from_text(
                        text, self.renderer.parse(text), prompt_tokens=len(tokens),
                        completion_tokens=completion_tokens, latency_s=latency,
                        finish_reason=finish))
        return generations

    def _batch_decoder(self, n_sequences: int, group: list[list[int]],
                       max_tokens: int) -> "BatchDecoder":
        """Return the batch context, recreated only when it is too small for this group.

        A new context loses the cached shared prefix (thousands of tokens with the full
        prompt) and each sequence's cached conversation. So the context is sized for a full
        group of MAX_BATCH_SEQUENCES rows like this one, and a small first call, such as a
        warm-up, does not force a second context.
        """
        decoder = getattr(self, "_decoder", None)
        if decoder is not None and decoder.fits(n_sequences, decoder.cells_needed(group, max_tokens)):
            return decoder
        if decoder is not None:
            decoder.close()
        kv_cells = kv_cells_needed(group, max_tokens, rows=MAX_BATCH_SEQUENCES)
        # Headroom so that a slightly longer group next time reuses the context.
        cells = -(-int(kv_cells * 1.25) // 256) * 256
        self._decoder = BatchDecoder(self._llm, self._llm.context_params,
                                     max(n_sequences, MAX_BATCH_SEQUENCES,
                                         getattr(decoder, "n_sequences", 0)), cells)
        return self._decoder

    def close(self) -> None:
        decoder, self._decoder = getattr(self, "_decoder", None), None
        if decoder is not None:
            decoder.close()
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


def common_prefix_length(first: list[int], second: list[int]) -> int:
    """Return the length of the common prefix, found by bisecting with slice comparisons."""
    limit = min(len(first), len(second))
    if first[:limit] == second[:limit]:
        return limit
    low, high = 0, limit            # first[:low] matches, first[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        if first[low:middle] == second[low:middle]:
            low = middle
        else:
            high = middle
    return low


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens all prompts share, leaving each prompt at least one token of its own."""
    length = min(len(prompt) for prompt in prompts) - 1
    for prompt in prompts[1:]:
        length = min(length, common_prefix_length(prompts[0], prompt))
    return max(length, 0)


def kv_cells_needed(prompts: list[list[int]], max_tokens: int, rows: int | None = None,
                    prefix: int | None = None) -> int:
    """Return the KV cells a group needs when its first `prefix` tokens are stored once.

    `prefix` defaults to the prompts' common prefix. With `rows`, the result covers at
    least that many rows, each as long as the group's longest.
    """
    if prefix is None:
        prefix = shared_prefix_length(prompts)
    own = [len(prompt) - prefix + max_tokens for prompt in prompts]
    if rows is not None:
        return prefix + max(own) * max(rows, len(prompts))
    return prefix + sum(own)


class BatchDecoder:
    """A llama.cpp context with several sequences that are decoded in one batch per step.

    The context shares the model weights (and LoRA adapter) of the Llama object. Its KV
    cache is unified (kv_unified on). The prompts' shared prefix, usually the system prompt
    with the tool listing, is evaluated once into a reserved cache sequence and kept
    between calls like Llama's own prefix cache. llama_memory_seq_cp then gives it to every
    sequence by tagging the same cells with more sequence ids. Each sequence also keeps its
    last prompt and generation, and a later prompt that continues it (or shares more than
    the prefix with it) evaluates only the tokens after the common part.

    NOTE: attention settings follow the Llama context (flash attention on, full-size SWA
    cache), so both paths compute alike. Greedy outputs can still differ from `chat` at
    near ties, because ggml's CPU kernels for chunks of many rows sum in another order
    than those for one row, so the same tokens evaluated in other chunks give logits that
    differ in the last digits (up to a few tenths were seen).
    """

    def __init__(self, llm, base_params, n_sequences: int, kv_cells: int):
        import llama_cpp

        self._api = llama_cpp
        self._llm = llm
        self.n_sequences = n_sequences
        self.kv_cells = kv_cells
        self._prefix_sequence = n_sequences          # the reserved cache sequence
        self._cached_prefix: list[int] = []
        # Tokens whose keys and values each sequence contains, kept between calls.
        self._slots: list[list[int]] = [[] for _ in range(n_sequences)]
        self.evaluated_tokens = 0        # prompt tokens decoded so far (prefix included)
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
        self.evaluated_tokens += len(entries)
        for offset in range(0, len(entries), self._batch_capacity):
            chunk = entries[offset:offset + self._batch_capacity]
            for index, (sequence, position, token, logits) in enumerate(chunk):
                self._add(index, token, position, sequence, logits)
            self._decode(len(chunk))
            for index, (sequence, _, _, logits) in enumerate(chunk):
                if logits:
                    on_logits(sequence, index)

    def _load_prefix(self, prefix: list[int]) -> bool:
        """Bring the cache sequence to exactly `prefix`, evaluating only what is new.

        Returns whether the sequence changed.
        """
        api = self._api
        keep = common_prefix_length(self._cached_prefix, prefix)
        if keep == len(self._cached_prefix) == len(prefix):
            return False
        # Drop everything from `keep` on, including cells of an evaluation that failed halfway.
        if not api.llama_memory_seq_rm(self._memory, self._prefix_sequence, keep, -1):
            api.llama_memory_seq_rm(self._memory, self._prefix_sequence, -1, -1)
            keep = 0
        self._cached_prefix = []
        self._evaluate([(self._prefix_sequence, position, prefix[position], False)
                        for position in range(keep, len(prefix))], None)
        self._cached_prefix = list(prefix)
        return True

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

    def prefix_for(self, prompts: list[list[int]]) -> int:
        """Return how many leading tokens of every prompt come from the prefix sequence.

        The cached prefix is kept while every prompt still starts with it, because a group
        of one prompt would otherwise count that whole prompt as shared. Otherwise the
        prefix is the prompts' common prefix.
        """
        cached = self._cached_prefix
        if cached and all(len(prompt) > len(cached) and prompt[:len(cached)] == cached
                          for prompt in prompts):
            return len(cached)
        return shared_prefix_length(prompts)

    def cells_needed(self, prompts: list[list[int]], max_tokens: int) -> int:
        """Return the KV cells `generate` would use for these prompts in this context."""
        return kv_cells_needed(prompts, max_tokens, prefix=self.prefix_for(prompts))

    def _clear_slots(self) -> None:
        for sequence in range(self.n_sequences):
            self._api.llama_memory_seq_rm(self._memory, sequence, -1, -1)
        self._slots = [[] for _ in range(self.n_sequences)]

    def _seat(self, prompts: list[list[int]], prefix_length: int) -> list[tuple[int, int]]:
        """Assign each prompt a cache sequence; return (sequence, tokens already cached) per prompt.

        A sequence keeps the tokens of its last prompt and generation between calls, so the
        next step of the same conversation (the old prompt, the action, the tool result)
        evaluates only what is new. Each prompt takes the free sequence whose cached tokens
        share the longest prefix with it. Sequences that no prompt takes are emptied, which
        keeps the cells in use within cells_needed.
        """
        api = self._api
        free = list(range(self.n_sequences))
        seats = []
        for prompt in prompts:
            # The longest match wins, and the lowest sequence number breaks ties.
            shared, best = max((common_prefix_length(self._slots[sequence], prompt), -sequence)
                               for sequence in free)
            best = -best
            free.remove(best)
            keep = min(shared, len(prompt) - 1)
            if keep < prefix_length:
                # Nothing is reusable beyond the shared prefix, so take the prefix sequence's cells.
                api.llama_memory_seq_rm(self._memory, best, -1, -1)
                api.llama_memory_seq_cp(self._memory, self._prefix_sequence, best, -1, -1)
                keep = prefix_length
            else:
                api.llama_memory_seq_rm(self._memory, best, keep, -1)
            self._slots[best] = list(prompt[:keep])
            seats.append((best, keep))
        for sequence in free:
            api.llama_memory_seq_rm(self._memory, sequence, -1, -1)
            self._slots[sequence] = []
        return seats

    def generate(self, prompts: list[list[int]], sampling: Sampling,
                 stop: list[str]) -> list[tuple[str, int, str, float]]:
        """Return (text, completion tokens, finish reason, seconds) per prompt, in order."""
        api = self._api
        started = time.perf_counter()
        count = len(prompts)
        samplers: list = []
        try:
            prefix_length = self.prefix_for(prompts)
            if self._load_prefix(prompts[0][:prefix_length]):
                # Sequences may contain cells of the old prefix, so empty them all.
                self._clear_slots()
            seats = self._seat(prompts, prefix_length)
            samplers = [self._sampler(sampling) for _ in range(count)]
            generated: list[list[int]] = [[] for _ in range(count)]
            texts = [""] * count
            finish = ["length"] * count
            latency = [0.0] * count
            pending: dict[int, int] = {}          # prompt index -> its next token to decode
            by_sequence = {sequence: index for index, (sequence, _) in enumerate(seats)}

            def accept(sequence: int, batch_index: int) -> None:
                index = by_sequence[sequence]
                # llama_sampler_sample also accepts the token (repeat penalties see it).
                token = api.llama_sampler_sample(samplers[index], self._ctx, batch_index)
                done = api.llama_vocab_is_eog(self._vocab, token)
                if not done:
                    generated[index].append(token)
                    text = self._llm.detokenize(generated[index]).decode("utf-8", errors="ignore")
                    cut = min((text.find(marker) for marker in stop if marker in text), default=-1)
                    if cut >= 0:
                        texts[index] = text[:cut]
                        done = True
                    else:
                        texts[index] = text
                if done:
                    finish[index] = "stop"
                elif len(generated[index]) >= sampling.max_tokens:
                    done = True
                if done:
                    latency[index] = time.perf_counter() - started
                else:
                    pending[index] = token

            # Each prompt is evaluated from where its sequence's cache ends, all packed into
            # batches. Only the last token of each prompt requests logits.
            entries = [(sequence, position, tokens[position], position == len(tokens) - 1
                        and sampling.max_tokens > 0)
                       for tokens, (sequence, keep) in zip(prompts, seats)
                       for position in range(keep, len(tokens))]
            self._evaluate(entries, accept)
            for tokens, (sequence, _) in zip(prompts, seats):
                self._slots[sequence] = list(tokens)

            # Generation: one token of every unfinished sequence per llama_decode call.
            while pending:
                order = sorted(pending)
                for batch_index, index in enumerate(order):
                    sequence = seats[index][0]
                    token = pending.pop(index)
                    self._add(batch_index, token, len(self._slots[sequence]), sequence, True)
                    self._slots[sequence].append(token)
                self._decode(len(order))
                for batch_index, index in enumerate(order):
                    accept(seats[index][0], batch_index)
        except BaseException:
            # The sequences' cells may no longer match _slots, so empty them all.
            self._clear_slots()
            raise
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
