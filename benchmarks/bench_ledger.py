"""Benchmark the audit ledger: durable append rate and full verification time.

Usage:
    .venv/bin/python benchmarks/bench_ledger.py [--append-entries 2000] [--verify-entries 1000000]

Targets: 2,000 appended entries per second, durable; full verification of 1,000,000 entries
in under 30 s. Ratios are printed so that a value >= 1.0 meets the target
(rate / 2000 for appends, 30 s / measured seconds for verification).

Durability: the ledger runs SQLite in WAL mode with synchronous=FULL, so every commit fsyncs
the WAL before returning; a committed entry survives a process crash and a power loss. The
rows with synchronous=NORMAL are for comparison only: NORMAL survives a process crash but can
lose the last commits on power loss, which could leave a published checkpoint ahead of the
entries it signs. Batched rows commit many entries per transaction (one fsync per batch);
that is how bulk imports should append. One entry per durable commit cannot exceed the disk's
fsync rate, which the first row measures.

Everything is written under a temporary folder, never the source tree. Verification runs in a
child process so that its peak memory (max RSS) is measured alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit.ledger import Ledger  # noqa: E402

APPEND_TARGET_PER_S = 2000.0
VERIFY_TARGET_S = 30.0
VERIFY_TARGET_ENTRIES = 1_000_000


def eval_payload(number: int, generator: random.Random) -> dict:
    """Return a realistic eval payload: 6 metrics with intervals, 6 rules, runtime and decoding."""
    metrics = {}
    for name in ("accuracy", "tool_call_valid", "argument_exact", "refusal_rate",
                 "escalation_rate", "policy_violation_rate"):
        value = round(generator.random(), 4)
        metrics[name] = {"value": value, "interval": [round(max(0.0, value - 0.03), 4),
                                                      round(min(1.0, value + 0.03), 4)], "n": 500}
    rules = {f"rule_{r}": {"passed": generator.randint(450, 500), "n": 500} for r in range(6)}
    return {"version": f"sha256:{number % 50:064x}", "eval_set": "sha256:" + "e" * 64,
            "metrics": metrics, "rules": rules,
            "runtime": {"kind": "llama.cpp", "model": "gemma3-270m-q4_k_m", "threads": 2,
                        "context": 4096},
            "decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "seed": 7},
            "run": number}


def measure_appends(folder: Path, count: int, synchronous: str, batch: int, checkpoint: bool) -> dict:
    path = folder / f"append-{synchronous}-{batch}-{int(checkpoint)}" / "ledger.db"
    generator = random.Random(1)
    payloads = [eval_payload(i, generator) for i in range(count)]
    with Ledger.open(path, synchronous=synchronous) as ledger:
        started = time.perf_counter()
        if batch == 1:
            for payload in payloads:
                ledger.append("eval", payload, "bench", checkpoint=checkpoint)
        else:
            for start in range(0, count, batch):
                ledger.append_many([("eval", p, "bench") for p in payloads[start:start + batch]],
                                   checkpoint=checkpoint)
        elapsed = time.perf_counter() - started
        assert ledger.size() == count + 1
    rate = count / elapsed
    label = (f"append, synchronous={synchronous}, "
             + ("1 entry/commit" if batch == 1 else f"{batch} entries/commit")
             + (", checkpoint each commit" if checkpoint else ", no checkpoint"))
    return {"case": label, "entries": count, "seconds": elapsed, "result": f"{rate:,.0f} entries/s",
            "ratio": rate / APPEND_TARGET_PER_S if synchronous == "FULL" else None}


def measure_fsync(folder: Path, count: int = 200) -> dict:
    """Time write(4 KiB) + fsync on the benchmark's disk: the floor for one durable commit."""
    path = folder / "fsync.bin"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(descriptor, b"\0" * 4096)
            os.fsync(descriptor)
        elapsed = time.perf_counter() - started
    finally:
        os.close(descriptor)
    return {"case": "disk floor: write 4 KiB + fsync (max durable commits/s)", "entries": count,
            "seconds": elapsed, "result": f"{count / elapsed:,.0f} fsyncs/s", "ratio": None}


def build_large_ledger(path: Path, count: int, batch: int = 1000) -> float:
    generator = random.Random(2)
    started = time.perf_counter()
    with Ledger.open(path) as ledger:
        for start in range(1, count, batch):
            items = [("eval", eval_payload(i, generator), "bench") for i in range(start, min(start + batch, count))]
            ledger.append_many(items, checkpoint=True)
        assert ledger.size() == count
    return time.perf_counter() - started


VERIFY_CHILD = """
import json, resource, sys, time
from audit.ledger import Ledger
path, deep = sys.argv[1], sys.argv[2] == "deep"
with Ledger.open(path, read_only=True) as ledger:
    started = time.perf_counter()
    report = ledger.verify(deep=deep)
    elapsed = time.perf_counter() - started
print(json.dumps({"ok": report.ok, "size": report.size, "seconds": elapsed,
                  "checkpoints": report.checkpoints_checked,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_verify(path: Path, deep: bool) -> dict:
    completed = subprocess.run([sys.executable, "-c", VERIFY_CHILD, str(path), "deep" if deep else "full"],
                               capture_output=True, text=True, check=True,
                               cwd=Path(__file__).resolve().parent.parent)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise SystemExit(f"verification failed on the benchmark ledger: {completed.stdout}")
    return result


def print_table(rows: list[dict]) -> None:
    header = f"{'case':<72} {'entries':>10} {'seconds':>9} {'result':>24} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{row['case']:<72} {row['entries']:>10,} {row['seconds']:>9.2f} {row['result']:>24} {ratio:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append-entries", type=int, default=2000,
                        help="entries per append case (default 2000)")
    parser.add_argument("--verify-entries", type=int, default=VERIFY_TARGET_ENTRIES,
                        help="ledger size for the verification case (default 1,000,000)")
    parser.add_argument("--deep-entries", type=int, default=20_000,
                        help="ledger size for the --deep verification case (default 20,000; 0 skips)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    print(f"working folder: {folder}; {os.cpu_count()} CPUs; SQLite WAL")
    rows = [measure_fsync(folder)]
    print_table(rows)
    for synchronous, batch, checkpoint in (("FULL", 1, True), ("FULL", 1, False), ("NORMAL", 1, True),
                                           ("FULL", 100, True), ("FULL", 1000, True)):
        rows.append(measure_appends(folder, args.append_entries, synchronous, batch, checkpoint))
        print_table(rows[-1:])

    large = folder / "large" / "ledger.db"
    build_seconds = build_large_ledger(large, args.verify_entries)
    size_mb = sum(p.stat().st_size for p in large.parent.glob("ledger.db*")) / 2**20
    rows.append({"case": f"build ledger (1000 entries/commit, checkpoint each), {size_mb:,.0f} MiB",
                 "entries": args.verify_entries, "seconds": build_seconds,
                 "result": f"{args.verify_entries / build_seconds:,.0f} entries/s", "ratio": None})
    print_table(rows[-1:])
    result = measure_verify(large, deep=False)
    scale = VERIFY_TARGET_ENTRIES / result["size"]
    rows.append({"case": f"verify (leaf hashes, tree, {result['checkpoints']} checkpoints), "
                         f"max RSS {result['max_rss_mb']:,.0f} MiB",
                 "entries": result["size"], "seconds": result["seconds"],
                 "result": f"{result['size'] / result['seconds']:,.0f} entries/s",
                 "ratio": VERIFY_TARGET_S / (result["seconds"] * scale)})
    print_table(rows[-1:])

    if args.deep_entries:
        deep_path = folder / "deep" / "ledger.db"
        build_large_ledger(deep_path, args.deep_entries)
        deep = measure_verify(deep_path, deep=True)
        rows.append({"case": f"verify --deep (adds RFC 8785 + payload checks), max RSS "
                             f"{deep['max_rss_mb']:,.0f} MiB",
                     "entries": deep["size"], "seconds": deep["seconds"],
                     "result": f"{deep['size'] / deep['seconds']:,.0f} entries/s", "ratio": None})

    print()
    print_table(rows)
    if scale != 1:
        print(f"note: verification ran on {result['size']:,} entries; its ratio assumes linear "
              f"scaling to {VERIFY_TARGET_ENTRIES:,}")
    print(f"bench process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
