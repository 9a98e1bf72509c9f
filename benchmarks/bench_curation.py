"""Benchmark: curation up to balancing (rendering excluded) on a synthetic trace store.

    .venv/bin/python benchmarks/bench_curation.py --traces 100000 --workers 2

The store contains N traces of the real entitlements pack: N/4 generated tasks with 4
samples each. Per task, sample 0 is correct, sample 1 is correct with other answer wording,
sample 2 states a figure no tool returned (fails policy) and sample 3 calls an unknown tool
(fails format). Tool results come from the pack's real tools. Tasks the fixture cannot
answer (guidance questions) get a search and an answer citing the first passage, which
verification accepts or rejects on its merits.

Reported side by side in one run:
    anchor    streaming every trace row from SQLite and decoding its JSON columns, the
              floor that any verification of the store pays
    plan      verification (stored in trace_verdicts), selection, decision split, dedup,
              leakage guard, train/validation split and balancing
and the ratios plan/anchor and plan/target, where the target is 120 s per million traces
(2 minutes for 1,000,000 on 2 cores). CPU seconds of this process and of the workers are
reported too, because wall time on a shared machine depends on its load, which the
result also lists. Peak RSS is the maximum resident set of this process and of any
worker process (getrusage).

The store is built once under --store-dir and reused when it already has N traces.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.chat import ToolCall, assistant_message, tool_message  # noqa: E402
from appliance.curation import pipeline  # noqa: E402
from appliance.packs import ToolError, load_pack  # noqa: E402
from appliance.store import Store, dumps, now  # noqa: E402

TARGET_S_PER_MILLION = 120.0
SAMPLES = 4


def _execute(pack, context, name, arguments):
    try:
        value = pack.tools[name].function(context, **arguments)
    except ToolError as error:
        return {"error": str(error)}
    return value if isinstance(value, dict) else {"result": value}


def _conversation(pack, context, prompt, request, calls):
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": request}]
    for step, (name, arguments) in enumerate(calls):
        message = assistant_message([ToolCall(name, arguments)], None, step)
        messages.append(message)
        result = _execute(pack, context, name, arguments) if name in pack.tools \
            else {"error": f"unknown tool {name!r}"}
        messages.append(tool_message(message["tool_calls"][0]["id"], name, result))
    return messages


def _correct_calls(pack, context, task, wording):
    expected = task["expected"]
    if expected["outcome"] == "refuse":
        return [("refuse", {"reason": f"This desk only covers workplace entitlements{wording}.",
                            "category": expected["refusal_category"]})], "refuse"
    if expected["outcome"] == "escalate":
        return [("escalate_to_officer", {"reason": "needs an officer",
                                         "summary": f"Enquiry for an officer{wording}."})], "escalate"
    rate = expected.get("rate")
    calls = []
    figure = ""
    if rate:
        arguments = {"award": rate["award"], "classification": rate["classification"],
                     "rate_type": rate["rate_type"]}
        if rate.get("requested_date"):
            arguments["effective_date"] = rate["requested_date"]
        calls.append(("lookup_rate", arguments))
        figure = f" The rate is {rate['value']:g} ({rate['unit']})."
    citations = []
    if expected.get("passage_ids") or expected["outcome"] == "silent":
        query = " ".join(task["request"].split()[:6])
        result = _execute(pack, context, "search_guidance", {"query": query})
        calls.append(("search_guidance", {"query": query}))
        passages = result.get("passages") or []
        if passages and expected["outcome"] != "silent":
            citations = [passages[0]["id"]]
    answer = (f"The guidance is silent on this{wording}." if expected["outcome"] == "silent"
              else f"Here is the answer{wording}.{figure}")
    calls.append(("final_answer", {"answer": answer, "citations": citations}))
    return calls, "answer"


def build_store(path: Path, n_traces: int) -> None:
    pack = load_pack("entitlements")
    context = pack.make_context()
    store = Store(path)
    run_id = "run-bench"
    store.insert("runs", {"id": run_id, "pack_id": pack.id, "pack_version": pack.version,
                          "pack_digest": pack.digest, "status": "completed",
                          "created_at": now(), "updated_at": now(), "n_samples": SAMPLES})

    tools_text = dumps(pack.openai_tools())
    stored_verdicts = dumps({rule.id: {"passed": None, "reason": "not recorded"}
                             for rule in pack.rules})
    n_tasks = n_traces // SAMPLES
    started = time.perf_counter()

    rows = []
    columns = ("id", "run_id", "task_id", "sample_index", "pack_id", "pack_version",
               "pack_digest", "task", "messages", "tools", "steps", "outcome", "errors",
               "rule_verdicts", "prompt_tokens", "completion_tokens", "latency_s", "source",
               "created_at")
    sql = (f"insert into traces ({', '.join(columns)}) "
           f"values ({', '.join('?' for _ in columns)})")

    for number, task in enumerate(pack.tasks(n_tasks, seed=17)):
        task = dict(task, id=f"bench-{number:07d}")
        task_text = dumps(task)

        for sample in range(SAMPLES):
            calls, outcome = _correct_calls(pack, context, task, "" if sample != 1 else " today")
            errors = []
            if sample == 2:
                name, arguments = calls[-1]
                if name == "final_answer":
                    calls[-1] = (name, dict(arguments, answer="It is 987.65 per hour."))
            if sample == 3:
                calls = [("lookup_salary", {"award": "x"})] + calls
                errors = [{"step": 0, "kind": "unknown_tool", "message": "unknown tool"}]
            messages = _conversation(pack, context, pack.prompts["full"], task["request"], calls)
            steps = [{"index": i, "prompt_tokens": 900, "completion_tokens": 40,
                      "latency_s": 0.5, "raw_output": "", "error": None}
                     for i in range(len(calls))]
            rows.append((f"tr-{number:07d}-{sample}", run_id, task["id"], sample, pack.id,
                         pack.version, pack.digest, task_text, dumps(messages), tools_text,
                         dumps(steps), outcome, dumps(errors), stored_verdicts, 900, 40, 2.0,
                         "harness", now()))

        if len(rows) >= 20_000:
            with store.transaction():
                store.db.conn.executemany(sql, rows)
            rows.clear()
            print(f"  built {number * SAMPLES:,} traces in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)

    if rows:
        with store.transaction():
            store.db.conn.executemany(sql, rows)
    store.close()


def anchor(store: Store) -> float:
    """Stream every trace row and decode its JSON columns, as verification must."""
    started = time.perf_counter()
    cursor = store.db.conn.execute(
        "select task, messages, errors, steps from traces order by task_id")
    while True:
        chunk = cursor.fetchmany(4096)
        if not chunk:
            break
        for row in chunk:
            for text in row:
                json.loads(text)
    return time.perf_counter() - started


def peak_rss_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store-dir", default="/tmp/reckon-bench-curation")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = parser.parse_args()

    folder = Path(args.store_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"traces-{args.traces}.db"
    if path.exists():
        probe = Store(path)
        ready = probe.count("traces") == (args.traces // SAMPLES) * SAMPLES
        probe.close()
        if not ready:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    if not path.exists():
        started = time.perf_counter()
        build_store(path, args.traces)
        print(f"store built in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    store = Store(path)
    store.db.conn.execute("drop table if exists trace_verdicts")
    anchor_s = anchor(store)

    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = time.process_time()
    started = time.perf_counter()
    plan = pipeline.plan(store, pipeline.CurationConfig(workers=args.workers))
    plan_s = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu_s = (children_after.ru_utime + children_after.ru_stime
                    - children_before.ru_utime - children_before.ru_stime)
    main_cpu_s = time.process_time() - cpu_before
    own_rss, worker_rss = peak_rss_mib()

    target_s = TARGET_S_PER_MILLION * store.count("traces") / 1_000_000
    stages = dict(plan.timings)
    result = {
        "traces": store.count("traces"), "workers": args.workers, "cpus": os.cpu_count(),
        "anchor_s": round(anchor_s, 2), "plan_s": round(plan_s, 2),
        "plan_over_anchor": round(plan_s / anchor_s, 2),
        "plan_over_target": round(plan_s / target_s, 2), "target_s": round(target_s, 1),
        "cpu_s": {"main": round(main_cpu_s, 1), "workers": round(worker_cpu_s, 1)},
        "load_average": os.getloadavg(),
        "stages_s": {name: round(value, 2) for name, value in stages.items()},
        "slowest_stage": max(stages, key=stages.get),
        "peak_rss_mib": {"main": round(own_rss), "largest_worker": round(worker_rss)},
        "funnel": plan.funnel,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:18} {value}")


if __name__ == "__main__":
    main()
