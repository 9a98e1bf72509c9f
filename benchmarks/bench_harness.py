"""Harness throughput: the embedded teacher in process, and scaling with concurrency
against a server backend (llama-cpp-python's OpenAI-compatible server on loopback).

Usage:
    .venv/bin/python benchmarks/bench_harness.py [--tasks 10] [--concurrency 1,2,4]

Reports tasks per minute, processed tokens per second (prompt + completion, as the backend
counted them) and completion tokens per second. The concurrency rows are ratios against
concurrency 1 on the same server, tasks and settings. Everything runs on loopback in a
temporary workspace.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.harness import create_run, execute_run, Limits  # noqa: E402
from appliance.models import embedded_gguf_path  # noqa: E402
from appliance.netguard import enforce_offline  # noqa: E402
from appliance.packs import load_pack  # noqa: E402
from appliance.runtimes import Sampling, make_runtime  # noqa: E402
from appliance.workspace import Workspace  # noqa: E402


def measure(workspace, pack, runtime, tasks, concurrency, max_tokens, max_steps):
    store = workspace.store()
    run = create_run(store, pack, runtime, tasks=tasks, samples=1, concurrency=concurrency,
                     sampling=Sampling(max_tokens=max_tokens), limits=Limits(max_steps=max_steps),
                     prompt="full")
    started = time.perf_counter()
    execute_run(store, run, pack, runtime)
    wall = time.perf_counter() - started
    rows = list(store.rows("traces", "run_id = ?", [run["id"]]))
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    return {"tasks": len(rows), "wall_s": wall, "tasks_per_min": 60 * len(rows) / wall,
            "tokens_per_s": (prompt + completion) / wall, "completion_tokens_per_s": completion / wall,
            "steps": sum(len(r["steps"]) for r in rows)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(n_ctx: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("llama-cpp-python server did not start within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10, help="tasks per measurement")
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=120, help="max new tokens per step")
    parser.add_argument("--max-steps", type=int, default=4, help="max steps per task")
    args = parser.parse_args()
    enforce_offline()
    pack = load_pack("entitlements")
    tasks = pack.tasks(args.tasks, seed=11)
    cpu = os.cpu_count()

    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace.resolve(Path(folder) / "ws")
        runtime = make_runtime("embedded")
        embedded = measure(workspace, pack, runtime, tasks, 1, args.max_tokens, args.max_steps)
        runtime.close()

        process, url = start_server(8192)
        scaling = []
        try:
            runtime = make_runtime(f"openai:gemma@{url}#completions")
            for level in [int(x) for x in args.concurrency.split(",")]:
                scaling.append((level, measure(workspace, pack, runtime, tasks, level,
                                               args.max_tokens, args.max_steps)))
        finally:
            process.terminate()
            process.wait(timeout=10)

    print(f"# Harness throughput ({args.tasks} entitlements tasks, full prompt, greedy, "
          f"max {args.max_steps} steps x {args.max_tokens} tokens; {cpu} CPU cores)\n")
    print("| backend | concurrency | tasks/min | tokens/s (prompt+completion) | completion tokens/s | ratio vs c=1 |")
    print("|---|---|---|---|---|---|")
    print(f"| embedded (llama.cpp in process) | 1 | {embedded['tasks_per_min']:.2f} | "
          f"{embedded['tokens_per_s']:.0f} | {embedded['completion_tokens_per_s']:.1f} | - |")
    base = scaling[0][1]["tasks_per_min"] if scaling else 1
    for level, result in scaling:
        print(f"| llama-cpp-python server (loopback) | {level} | {result['tasks_per_min']:.2f} | "
              f"{result['tokens_per_s']:.0f} | {result['completion_tokens_per_s']:.1f} | "
              f"{result['tasks_per_min'] / base:.2f} |")


if __name__ == "__main__":
    main()
