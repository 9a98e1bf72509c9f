"""Eval throughput: batched generation against one-at-a-time generation.

Both sides use the same LlamaCppRuntime (the embedded Gemma 3 270M GGUF), the same cases
of the shipped held-out set and greedy decoding, in one process. With --part first (the
BFCL-style first decision, the default):

    anchor   runtime.chat per case (Llama keeps the system prompt in its prefix cache)
    batched  runtime.chat_batch over --batch-size cases (the shared prefix is evaluated
             once and every step decodes one token of each unfinished case)

Each side first generates for a case outside the measured set (the batched side for a
full group), so both start with the system prompt cached. The script prints cases per
minute for each side, their ratio, how many outputs are identical and the first-decision
accuracy of each side.

With --part decode, the script times llama_decode steps alone after one case's prompt:
one row per step on the Llama context against --rows rows per step on the batch context
(each row one token of its own sequence), and reports milliseconds per token. That is the
ceiling of what batching can give on the machine, before prompt evaluation, sampling and
sequences of unequal length take their share.

    .venv/bin/python benchmarks/bench_eval.py --cases 32 --batch-size 16 --max-tokens 64
    .venv/bin/python benchmarks/bench_eval.py --prompt compact --tool-style compact
    .venv/bin/python benchmarks/bench_eval.py --part decode --rows 8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import time

from appliance.evaluation.runner import case_messages, check_first_decision, check_options
from appliance.packs import load_pack
from appliance.runtimes import Sampling, make_runtime


def spread(cases: list, count: int) -> list:
    """Pick `count` cases evenly across the set, so every category is represented."""
    step = max(1, len(cases) // count)
    return cases[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32, help="Cases to generate on each side.")
    parser.add_argument("--batch-size", type=int, default=8, help="Cases per chat_batch call.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Max new tokens per case.")
    parser.add_argument("--prompt", choices=["full", "compact"], default="full")
    parser.add_argument("--tool-style", choices=["full", "compact", "none"], default="full")
    parser.add_argument("--runtime", default="embedded", help="A llama.cpp runtime spec.")
    parser.add_argument("--part", choices=["first", "decode"], default="first",
                        help="First decisions, or decode steps alone.")
    parser.add_argument("--rows", default="8,16,32,64",
                        help="Rows per decode step to time (--part decode).")
    arguments = parser.parse_args()
    if arguments.part == "decode":
        decode_steps(arguments)
        return

    from appliance.evaluation.evalset import load_evalset

    pack = load_pack("entitlements")
    evalset = load_evalset(pack.evalset_path)
    cases = spread(evalset.cases, arguments.cases + 1)
    warmup, cases = cases[0], cases[1:arguments.cases + 1]
    system_prompt = pack.prompts[arguments.prompt]
    tools = pack.openai_tools()
    sampling = Sampling(max_tokens=arguments.max_tokens)
    conversations = [(case_messages(case, system_prompt), tools) for case in cases]
    warm_conversation = (case_messages(warmup, system_prompt), tools)
    options = check_options(pack)

    runtime = make_runtime(arguments.runtime, tool_style=arguments.tool_style)
    try:
        runtime.chat(*warm_conversation, sampling)
        started = time.perf_counter()
        single = [runtime.chat(messages, listed, sampling) for messages, listed in conversations]
        single_s = time.perf_counter() - started

        # A group as large as the measured ones, so that the batch context is sized once.
        runtime.chat_batch([warm_conversation] * arguments.batch_size, sampling)
        started = time.perf_counter()
        batched = []
        for offset in range(0, len(conversations), arguments.batch_size):
            batched.extend(runtime.chat_batch(conversations[offset:offset + arguments.batch_size],
                                              sampling))
        batched_s = time.perf_counter() - started
    finally:
        runtime.close()

    def accuracy(generations) -> float:
        results = [check_first_decision(case, generation, pack, options)
                   for case, generation in zip(cases, generations)]
        return round(sum(result.passed for result in results) / len(results), 4)

    identical = sum(a.text == b.text for a, b in zip(single, batched))
    report = {
        "cases": len(cases), "batch_size": arguments.batch_size,
        "max_tokens": arguments.max_tokens, "prompt": arguments.prompt,
        "tool_style": arguments.tool_style,
        "prompt_tokens_mean": sum(g.prompt_tokens for g in single) / len(single),
        "completion_tokens": {"one_at_a_time": sum(g.completion_tokens for g in single),
                              "batched": sum(g.completion_tokens for g in batched)},
        "seconds": {"one_at_a_time": round(single_s, 2), "batched": round(batched_s, 2)},
        "cases_per_minute": {"one_at_a_time": round(len(cases) * 60 / single_s, 2),
                             "batched": round(len(cases) * 60 / batched_s, 2)},
        "speedup": round(single_s / batched_s, 2),
        "identical_outputs": f"{identical}/{len(cases)}",
        "first_decision_accuracy": {"one_at_a_time": accuracy(single), "batched": accuracy(batched)},
    }
    print(json.dumps(report, indent=2))


def decode_steps(arguments, steps: int = 20) -> None:
    import llama_cpp

    from appliance.evaluation.evalset import load_evalset
    from appliance.runtimes.llamacpp import BatchDecoder

    pack = load_pack("entitlements")
    case = load_evalset(pack.evalset_path).cases[0]
    runtime = make_runtime(arguments.runtime, tool_style=arguments.tool_style)
    try:
        prompt = runtime.tokenize(runtime.renderer.render_prompt(
            case_messages(case, pack.prompts[arguments.prompt]), pack.openai_tools()))
        llm = runtime._llm
        llm.reset()
        llm.eval(prompt[:-1])
        started = time.perf_counter()
        for _ in range(steps):
            # The same token at the next position each time: the work of one decode step.
            llm.eval([prompt[-1]])
        single_ms = (time.perf_counter() - started) * 1000 / steps
        report = {"part": "decode", "prompt": arguments.prompt,
                  "prompt_tokens": len(prompt), "one_row_ms_per_token": round(single_ms, 2),
                  "rows": {}}
        for rows in (int(value) for value in arguments.rows.split(",")):
            decoder = BatchDecoder(llm, llm.context_params, rows, len(prompt) + rows * (steps + 4))
            try:
                decoder._load_prefix(prompt[:-1])
                for sequence in range(rows):
                    llama_cpp.llama_memory_seq_cp(decoder._memory, decoder._prefix_sequence,
                                                  sequence, -1, -1)
                timings = []
                for step in range(steps):
                    for sequence in range(rows):
                        decoder._add(sequence, prompt[-1], len(prompt) - 1 + step, sequence, True)
                    started = time.perf_counter()
                    decoder._decode(rows)
                    timings.append(time.perf_counter() - started)
            finally:
                decoder.close()
            per_token = sum(timings[2:]) * 1000 / (len(timings) - 2) / rows
            report["rows"][rows] = {"ms_per_token": round(per_token, 2),
                                    "speedup_per_token": round(single_ms / per_token, 2)}
    finally:
        runtime.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
