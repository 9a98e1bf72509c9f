"""Concurrent appends from real processes, and processes killed with SIGKILL mid-append."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest

from audit.ledger import Ledger
from tests.ledger_helpers import eval_payload

WORKERS = 8
APPENDS_PER_WORKER = 25

# fork keeps start-up short; each child opens its own connection after the fork.
CONTEXT = multiprocessing.get_context("fork")


def _append_worker(path: str, worker: int, count: int, barrier) -> None:
    barrier.wait(timeout=30)
    with Ledger.open(path) as ledger:
        for sequence in range(count):
            ledger.append("eval", eval_payload(f"sha256:w{worker}", worker=worker, sequence=sequence),
                          operator=f"worker-{worker}")


def test_eight_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "ledger.db")
    Ledger.open(path).close()
    barrier = CONTEXT.Barrier(WORKERS)
    processes = [CONTEXT.Process(target=_append_worker, args=(path, worker, APPENDS_PER_WORKER, barrier))
                 for worker in range(WORKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0, f"worker exited with {process.exitcode}"

    with Ledger.open(path, read_only=True) as ledger:
        entries = list(ledger.entries(kind="eval"))
        assert ledger.size() == 1 + WORKERS * APPENDS_PER_WORKER
        seen = sorted((e.payload["worker"], e.payload["sequence"]) for e in entries)
        assert seen == [(w, s) for w in range(WORKERS) for s in range(APPENDS_PER_WORKER)]
        for worker in range(WORKERS):
            sequences = [e.payload["sequence"] for e in ledger.entries(version=f"sha256:w{worker}")]
            assert sequences == list(range(APPENDS_PER_WORKER))
        sizes = [checkpoint.size for checkpoint in ledger.checkpoints()]
        assert sizes == sorted(sizes)
        assert sizes[-1] == ledger.size()
        report = ledger.verify()
        assert report.ok, report.problems
        assert report.latest_checkpoint.size == ledger.size()


def _kill_inside(path: str, method: str, after: bool) -> None:
    """Append and checkpoint once, sending SIGKILL to this process in `method` of the ledger.

    With after=True the method's own work (SQL inserts) runs first, so the kill lands
    between those writes and COMMIT.
    """
    ledger = Ledger.open(path)
    original = getattr(ledger, method)

    def die(*args, **kwargs):
        if after:
            original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(ledger, method, die)
    ledger.append("eval", eval_payload(marker="doomed"), checkpoint=False)
    ledger.checkpoint()


@pytest.mark.parametrize("method,after,kept", [
    ("_insert_entry", True, False),        # entry and nodes inserted, not committed
    ("_store_checkpoint", True, True),     # entry committed; checkpoint row inserted, not committed
    ("_publish_checkpoint", False, True),  # checkpoint committed, checkpoint.note not yet written
])
def test_kill_during_append_leaves_valid_ledger(tmp_path, method, after, kept):
    path = str(tmp_path / "ledger.db")
    with Ledger.open(path) as ledger:
        ledger.append("eval", eval_payload())
        size_before = ledger.size()

    process = CONTEXT.Process(target=_kill_inside, args=(path, method, after))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL

    with Ledger.open(path, read_only=True) as ledger:
        assert ledger.size() == size_before + (1 if kept else 0)
        report = ledger.verify()
        assert report.ok, report.problems
    with Ledger.open(path) as ledger:
        ledger.append("eval", eval_payload())
        assert ledger.verify().ok


def _append_forever(path: str) -> None:
    with Ledger.open(path) as ledger:
        while True:
            ledger.append("eval", eval_payload())


def test_kill_at_random_moments(tmp_path):
    path = str(tmp_path / "ledger.db")
    Ledger.open(path).close()
    generator = random.Random(7)
    for _ in range(4):
        process = CONTEXT.Process(target=_append_forever, args=(path,))
        process.start()
        time.sleep(0.3 + generator.random() * 0.4)
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=30)
        with Ledger.open(path, read_only=True) as ledger:
            report = ledger.verify()
            assert report.ok, report.problems
    with Ledger.open(path, read_only=True) as ledger:
        assert ledger.size() > 4


def test_concurrent_creation_makes_one_ledger(tmp_path):
    path = str(tmp_path / "fresh" / "ledger.db")
    barrier = CONTEXT.Barrier(4)
    processes = [CONTEXT.Process(target=_append_worker, args=(path, worker, 3, barrier))
                 for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    with Ledger.open(path, read_only=True) as ledger:
        assert [entry.index for entry in ledger.entries(kind="key")] == [0]
        assert ledger.size() == 13
        assert ledger.verify().ok


def test_threads_share_one_ledger(tmp_path):
    import threading

    with Ledger.open(tmp_path / "ledger.db") as ledger:
        def work(worker: int) -> None:
            for sequence in range(20):
                ledger.append("eval", eval_payload(f"sha256:t{worker}", sequence=sequence))

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert ledger.size() == 81
        assert ledger.verify().ok
