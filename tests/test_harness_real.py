"""The harness against real backends: the embedded model in process, the real
llama-cpp-python OpenAI-compatible server on loopback, and a real kill and resume."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from appliance.harness import AgentLoop, Limits, create_run, execute_run
from appliance.models import embedded_gguf_path
from appliance.runtimes import Sampling, make_runtime

pytestmark = pytest.mark.slow

TASK = {"id": "t-0", "request": "What is 2 + 3?", "expected": {"outcome": "answer", "sum": 5}}


def test_embedded_model_records_trace(tiny_pack):
    runtime = make_runtime("embedded", n_ctx=2048)
    try:
        loop = AgentLoop(tiny_pack, runtime, Sampling(max_tokens=48), Limits(max_steps=2))
        record = loop.run_task(TASK)
    finally:
        runtime.close()
    assert len(record.steps) >= 1
    assert record.steps[0]["prompt_tokens"] > 20
    assert record.steps[0]["completion_tokens"] > 0
    assert isinstance(record.steps[0]["raw_output"], str)
    assert record.outcome in {"answer", "refuse", "escalate", "step_limit"}
    assert set(record.rule_verdicts) == {"answer-from-sum", "task"}
    identity = runtime.identity()
    assert identity["weights_digest"].startswith("sha256:")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("llama-cpp-python server did not start within 60 s")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_openai_server_run(workspace, tiny_pack, llama_server, api):
    runtime = make_runtime(f"openai:gemma@{llama_server}#{api}")
    store = workspace.store()
    run = create_run(store, tiny_pack, runtime, tasks=tiny_pack.tasks(3), samples=1,
                     concurrency=2, sampling=Sampling(max_tokens=32),
                     limits=Limits(max_steps=2), prompt="full")
    finished = execute_run(store, run, tiny_pack, runtime)
    assert finished["status"] == "completed"
    rows = list(store.rows("traces", "run_id = ?", [run["id"]]))
    assert len(rows) == 3
    for row in rows:
        assert row["steps"][0]["prompt_tokens"] > 0
        assert row["steps"][0]["completion_tokens"] > 0


def test_cli_run_killed_then_resumed(tmp_path, tiny_pack_path):
    home = tmp_path / "ws"
    env = {**os.environ, "RECKON_HOME": str(home)}
    command = [sys.executable, "-m", "appliance.cli.__main__", "run", "--pack", str(tiny_pack_path),
               "--teacher", "embedded", "--tasks", "6", "--max-steps", "2", "--max-tokens", "24"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    database = home / "reckon.db"
    deadline = time.monotonic() + 240
    traces = 0
    while time.monotonic() < deadline and process.poll() is None:
        if database.exists():
            with sqlite3.connect(database) as connection:
                try:
                    traces = connection.execute("select count(*) from traces").fetchone()[0]
                except sqlite3.OperationalError:
                    traces = 0
            if traces >= 2:
                break
        time.sleep(0.3)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()

    with sqlite3.connect(database) as connection:
        run_id, status = connection.execute("select id, status from runs").fetchone()
        kept = connection.execute("select count(*) from traces").fetchone()[0]
    assert status == "running"
    assert 2 <= kept < 6

    resumed = subprocess.run([sys.executable, "-m", "appliance.cli.__main__", "--json", "run",
                              "--resume", run_id], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with sqlite3.connect(database) as connection:
        status = connection.execute("select status from runs where id = ?", [run_id]).fetchone()[0]
        rows = connection.execute("select task_id, sample_index from traces where run_id = ?",
                                  [run_id]).fetchall()
    assert status == "completed"
    assert len(rows) == 6
    assert len(set(rows)) == 6
