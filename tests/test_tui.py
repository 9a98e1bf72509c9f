"""Pilot tests of the operator console against a real workspace.

The workspace is built once per test process with the real harness (the tiny pack and a
ScriptedRuntime teacher), a real curate job and a real ledger, under fixed ids and
timestamps. Each test works on its own copy. Jobs started from the console run inline in
a thread worker, except in the spawn test, which starts a detached process against a
loopback chat-completions server.
"""

from __future__ import annotations

import asyncio
import http.server
import itertools
import json
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from appliance import harness, jobs
from appliance.packs import load_pack
from appliance.runtimes import Sampling
from appliance.workspace import Workspace
from tests.support.scripted import ScriptedRuntime, call
from tests.support.tiny_pack import write_tiny_pack

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


# 2026-12-04 09:00:00 UTC: every id and timestamp in the seeded workspace derives from it.
BASE_TIME = 1796374800.0
MARKUP_ANSWER = "Sum [0] is 2 [/x] and [unclosed"
MARKUP_TOOL = "no[/x]such[0]tool"

# Outputs of the scripted teacher, consumed in task order (one conversation at a time).
SCRIPT = [
    call("add", a=0, b=1), call("answer", text="The sum is 1."),
    call("add", a=1, b=1), call("answer", text=MARKUP_ANSWER),
    call(MARKUP_TOOL), "[bold]I am confused [/x", call("answer", text="It is 7"),
    "junk [", "junk [/]", "junk [0]",
    call("decline", reason="[red]not a sum"),
]


@contextmanager
def fixed_clock(start: float = BASE_TIME):
    """Patch id and time sources of the library so rows are the same on every build."""
    ticks = itertools.count()
    numbers = itertools.count(1)

    def fake_now() -> float:
        return start + next(ticks)

    def fake_id(prefix: str) -> str:
        return f"{prefix}-20261204-{next(numbers):04d}"

    with mock.patch("appliance.harness.now", fake_now), \
            mock.patch("appliance.harness.new_id", fake_id), \
            mock.patch("appliance.jobs.now", fake_now), \
            mock.patch("appliance.jobs.new_id", fake_id), \
            mock.patch("appliance.store.now", fake_now), \
            mock.patch("appliance.curation.pipeline.now", fake_now), \
            mock.patch("appliance.curation.review.now", fake_now):
        yield


def record_run(workspace: Workspace, pack_path: Path) -> str:
    """Record one run of five tiny-pack tasks with the scripted teacher; return its id."""
    store = workspace.store()
    pack = load_pack(pack_path)
    runtime = ScriptedRuntime(SCRIPT)
    run = harness.create_run(store, pack, runtime, tasks=pack.tasks(5, seed=0), samples=1,
                             concurrency=1, sampling=Sampling(temperature=0.0, max_tokens=64),
                             limits=harness.Limits(max_steps=3), prompt="full")
    harness.execute_run(store, run, pack, runtime)
    store.close()
    return run["id"]


def build_workspace(root: Path, with_dataset: bool = True) -> Workspace:
    """A workspace with a recorded run, optionally a dataset, and a ledger with evals."""
    pack_path = write_tiny_pack(root / "tiny-pack")
    workspace = Workspace.resolve(root / "home")
    with fixed_clock():
        run_id = record_run(workspace, pack_path)
        if with_dataset:
            job_id, _ = jobs.run_inline(workspace, "curate", {
                "runs": [run_id], "pack": str(pack_path), "per_task": 1,
                "validation_fraction": 0.0, "max_length": 512})
    write_ledger(workspace)
    return workspace


def eval_payload(version: str, accuracy: float) -> dict:
    return {
        "version": version, "eval_set": "sha256:" + "e" * 64,
        "metrics": {"accuracy": {"value": accuracy, "interval": [accuracy - 0.05, accuracy + 0.05],
                                 "n": 40}},
        "rules": {"answer-from-sum": {"passed": 38, "n": 40}},
        "runtime": {"kind": "llamacpp", "model": "embedded"},
        "decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 0},
    }


def write_ledger(workspace: Workspace) -> None:
    from audit.ledger import KEY_FILE, PUBLIC_KEY_FILE, Ledger
    from audit.note import Signer, save_signer

    # A fixed key: Ed25519 signatures are deterministic, so the checkpoints are too.
    save_signer(Signer("reckoning.test/ledger", bytes(range(32))),
                workspace.ledger_dir / KEY_FILE, workspace.ledger_dir / PUBLIC_KEY_FILE)
    version = "sha256:" + "a" * 64
    times = iter(f"2026-12-04T10:00:0{second}Z" for second in range(10))
    with mock.patch("audit.ledger.utc_timestamp", lambda: next(times)):
        with Ledger.open(workspace.ledger_path, origin="reckoning.test/ledger") as ledger:
            ledger.append("freeze", {"version": version, "bundle": "bundle-a"}, "alice")
            ledger.append("eval", eval_payload(version, 0.8), "alice")
            ledger.append("eval", eval_payload(version, 0.85), "bob")
            ledger.checkpoint()


_SEEDED: dict[str, Path] = {}


def seeded_root(tmp_path_factory) -> Path:
    """Build the seeded workspace once per test process (the snapshot tests share it)."""
    if "root" not in _SEEDED:
        root = tmp_path_factory.mktemp("tui-seed")
        build_workspace(root)
        _SEEDED["root"] = root
    return _SEEDED["root"]


@pytest.fixture(scope="session")
def seeded(tmp_path_factory) -> Path:
    return seeded_root(tmp_path_factory)


def copy_seeded(seeded: Path, target: Path) -> tuple[Workspace, Path]:
    shutil.copytree(seeded, target, symlinks=True)
    return Workspace(target / "home"), target / "tiny-pack"


@pytest.fixture
def seeded_copy(seeded, tmp_path) -> tuple[Workspace, Path]:
    return copy_seeded(seeded, tmp_path / "copy")


def make_app(workspace: Workspace, pack: Path | str = "entitlements", **options):
    from tui.app import ReckonApp

    options.setdefault("job_mode", "inline")
    options.setdefault("poll_interval", 0)
    return ReckonApp(workspace, pack=str(pack), teacher="embedded", **options)


async def wait_for(pilot, condition, timeout: float = 30.0, step: float = 0.1):
    """Poll the app (as its timer would) until `condition()` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pilot.app.poll()
        await pilot.pause()
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def table_keys(screen, selector: str) -> list[str]:
    from textual.widgets import DataTable

    table = screen.query_one(selector, DataTable)
    return [row.key.value for row in table.ordered_rows]


def plain(widget) -> str:
    """The text a Static shows, rendered by Rich without styles."""
    from rich.console import Console

    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=200, record=True, color_system=None)
    with console.capture() as capture:
        console.print(content)
    return capture.get()


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


# -- a loopback teacher ----------------------------------------------------------------------


class _AdderHandler(http.server.BaseHTTPRequestHandler):
    """OpenAI chat-completions endpoint that adds the two numbers of the request."""

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        messages = body["messages"]
        if messages[-1]["role"] == "tool":
            total = json.loads(messages[-1]["content"])["sum"]
            text = call("answer", text=f"The sum is {total:g}.")
        else:
            words = messages[-1]["content"].rstrip("?").split()
            text = call("add", a=int(words[2]), b=int(words[4]))
        size = len(json.dumps(messages))
        reply = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "adder",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text}}],
                 "usage": {"prompt_tokens": size // 3, "completion_tokens": len(text) // 4,
                           "total_tokens": size // 3 + len(text) // 4}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def adder_teacher():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AdderHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"openai:adder@http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


# -- navigation ------------------------------------------------------------------------------------


async def test_number_keys_switch_screens(seeded_copy):
    from tui.screens.help import HelpScreen

    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    expected = ["OverviewScreen", "RunsScreen", "TracesScreen", "DatasetScreen", "EvalScreen",
                "TrainScreen", "BundlesScreen", "LedgerScreen"]
    async with app.run_test(size=(150, 45)) as pilot:
        for key, name in zip("12345678", expected):
            await pilot.press(key)
            await pilot.pause()
            assert type(app.screen).__name__ == name
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)


async def test_palette_lists_screens_and_actions(seeded_copy):
    from tui.commands import ReckonCommands

    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        provider = ReckonCommands(app.screen)
        found = [hit.text async for hit in provider.discover()]
        assert "Go to Ledger" in found
        assert "Verify ledger" in found
        assert "Start harness run" in found

        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Go to Ledger")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause()
        assert type(app.screen).__name__ == "LedgerScreen"


# -- overview ------------------------------------------------------------------------------------


async def test_overview_counts_and_running_jobs(seeded_copy):
    import os

    workspace, pack = seeded_copy
    store = workspace.store()
    job_id = jobs.create(store, "curate", {"all": True})
    store.update("jobs", job_id, {"status": "running", "pid": os.getpid(),
                                  "progress": {"completed": 3, "total": 8, "message": "verify [0]"}})
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.pause()
        screen = app.screen
        traces = plain(screen.query_one("#card-traces"))
        assert "traces" in traces
        assert "5" in traces
        assert "step_limit" in traces
        assert "ds-" in plain(screen.query_one("#card-datasets"))
        ledger = plain(screen.query_one("#card-ledger"))
        assert "entries" in ledger
        assert "size 4 (all entries)" in ledger
        assert "tiny 0.1.0" in plain(screen.query_one("#card-pack"))
        assert table_keys(screen, "#running-jobs") == [job_id]
    store.close()


# -- runs ------------------------------------------------------------------------------------------


def fill(screen, values: dict[str, str]) -> None:
    from textual.widgets import Input

    for widget_id, value in values.items():
        screen.query_one(f"#{widget_id}", Input).value = value


async def test_runs_start_inline_and_watch(seeded_copy, adder_teacher):
    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("2")
        screen = app.screen
        fill(screen, {"run-pack": str(pack), "run-teacher": adder_teacher, "run-tasks": "3",
                      "run-samples": "1", "run-concurrency": "2"})
        await pilot.click("#start-run")
        await pilot.pause()
        store = workspace.store()
        job = next(store.rows("jobs", "kind = 'harness.run'", order_by="rowid desc", limit=1))
        assert job["params"]["tasks"] == 3
        assert job["params"]["teacher"] == adder_teacher

        await wait_for(pilot, lambda: store.get("jobs", job["id"])["status"] == "succeeded")
        await wait_for(pilot, lambda: len(table_keys(screen, "#runs-table")) == 2)
        run_id = store.get("jobs", job["id"])["result"]["run_id"]
        assert table_keys(screen, "#run-jobs") == [job["id"]]
        assert run_id in table_keys(screen, "#runs-table")

        # Highlighting the new run lists its traces as they were written.
        table = screen.query_one("#runs-table")
        table.move_cursor(row=table_keys(screen, "#runs-table").index(run_id))
        await pilot.pause()
        traces = table_keys(screen, "#run-traces")
        assert len(traces) == 3
        assert all(store.get("traces", trace)["outcome"] == "answer" for trace in traces)
        assert "succeeded" in plain(screen.query_one("#run-progress .job-status"))
        store.close()


RUN_FORM_ERRORS = [
    ("run-tasks", "0", "tasks must be at least 1"),
    ("run-samples", "x", "samples per task must be a whole number"),
    ("run-concurrency", "", "concurrency is missing"),
    ("run-teacher", "bogus:model", "unknown runtime kind"),
    ("run-pack", "", "pack is missing"),
]


async def test_runs_form_rejects_bad_input(seeded_copy):
    from textual.widgets import Input

    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("2")
        screen = app.screen
        good = {widget_id: screen.query_one(f"#{widget_id}", Input).value
                for widget_id, _, _ in RUN_FORM_ERRORS}
        for field, value, message in RUN_FORM_ERRORS:
            fill(screen, {**good, field: value})
            app.clear_notifications()
            screen.action_start_run()
            await pilot.pause()
            assert any(message in text for text in errors(app)), (field, errors(app))
        assert workspace.store().count("jobs", "kind = 'harness.run'") == 0


async def test_spawned_run_outlives_console(seeded_copy, adder_teacher):
    workspace, pack = seeded_copy
    app = make_app(workspace, pack, job_mode="spawn")
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("2")
        fill(app.screen, {"run-pack": str(pack), "run-teacher": adder_teacher, "run-tasks": "2"})
        await pilot.click("#start-run")
        await pilot.pause()
        store = workspace.store()
        job = next(store.rows("jobs", "kind = 'harness.run'", order_by="rowid desc", limit=1))
        assert job["pid"]
        assert job["log_path"]

    # The console has closed; the detached process finishes the job on its own.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.get("jobs", job["id"])["status"] not in jobs.TERMINAL_STATUSES:
        time.sleep(0.2)
    finished = store.get("jobs", job["id"])
    assert finished["status"] == "succeeded", finished["error"]
    assert store.get("runs", finished["result"]["run_id"])["n_traces"] == 2
    store.close()


# -- traces ----------------------------------------------------------------------------------------


async def choose(pilot, selector: str, value) -> None:
    from textual.widgets import Select

    pilot.app.screen.query_one(selector, Select).value = value
    await pilot.pause()


async def test_traces_filter_by_outcome_rule_and_tool(seeded_copy):
    from textual.widgets import Select

    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert len(table_keys(screen, "#traces-table")) == 5

        await choose(pilot, "#filter-outcome", "step_limit")
        assert table_keys(screen, "#traces-table") == ["tr-20261204-0005"]
        await choose(pilot, "#filter-outcome", Select.NULL)

        await choose(pilot, "#filter-rule", "answer-from-sum=failed")
        assert table_keys(screen, "#traces-table") == ["tr-20261204-0004"]
        await choose(pilot, "#filter-rule", "answer-from-sum=n/a")
        assert table_keys(screen, "#traces-table") == ["tr-20261204-0006", "tr-20261204-0005"]
        await choose(pilot, "#filter-rule", Select.NULL)

        await choose(pilot, "#filter-tool", "add")
        assert table_keys(screen, "#traces-table") == ["tr-20261204-0003", "tr-20261204-0002"]
        await choose(pilot, "#filter-tool", MARKUP_TOOL)
        assert table_keys(screen, "#traces-table") == ["tr-20261204-0004"]
        await choose(pilot, "#filter-outcome", "step_limit")
        assert table_keys(screen, "#traces-table") == []
        assert "0 traces" in plain(screen.query_one("#trace-count"))


async def test_traces_show_markup_literally(seeded_copy):
    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("3")
        screen = app.screen
        conversations = {}
        for trace_id in ("tr-20261204-0003", "tr-20261204-0004", "tr-20261204-0005",
                         "tr-20261204-0006"):
            table = screen.query_one("#traces-table")
            table.move_cursor(row=table_keys(screen, "#traces-table").index(trace_id))
            await pilot.pause()
            conversations[trace_id] = "\n".join(plain(block) for block in screen.query(".message"))
        # Model text with markup-like brackets, in a tool call and as raw output.
        assert MARKUP_ANSWER in conversations["tr-20261204-0003"]
        assert "[bold]I am confused [/x" in conversations["tr-20261204-0004"]
        # Tool output naming the unknown tool, brackets and all.
        assert f"unknown tool '{MARKUP_TOOL}'" in conversations["tr-20261204-0004"]
        assert "junk [/]" in conversations["tr-20261204-0005"]
        assert "[red]not a sum" in conversations["tr-20261204-0006"]
        summary = plain(screen.query_one("#trace-summary"))
        assert "no answer given" in summary


async def test_traces_accept_reject_and_edit(seeded_copy):
    from textual.widgets import Input

    from appliance.curation import review

    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    store = workspace.store()
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("3")
        screen = app.screen
        table = screen.query_one("#traces-table")
        keys = table_keys(screen, "#traces-table")

        table.move_cursor(row=keys.index("tr-20261204-0002"))
        table.focus()
        await pilot.press("a")
        assert store.get("traces", "tr-20261204-0002")["review_status"] == "accepted"

        table.move_cursor(row=keys.index("tr-20261204-0004"))
        await pilot.press("o")
        history = review.history(store, "tr-20261204-0004")
        assert history[-1]["action"] == "accept"
        assert history[-1]["override"] == 1
        await pilot.press("r")
        assert store.get("traces", "tr-20261204-0004")["review_status"] == "rejected"

        # Edit: invalid JSON first (the dialog stays open), then a fixed answer call.
        table.move_cursor(row=keys.index("tr-20261204-0003"))
        await pilot.press("e")
        await pilot.pause()
        dialog = app.screen
        dialog.query_one("#edit-step", Input).value = "1"
        dialog.query_one("#edit-arguments", Input).value = "{not json"
        await pilot.click("#edit-save")
        await pilot.pause()
        assert any("not valid JSON" in text for text in errors(app))
        assert app.screen is dialog
        dialog.query_one("#edit-arguments", Input).value = '{"text": "The sum is 2."}'
        dialog.query_one("#edit-note", Input).value = "drop the stray brackets"
        # Toasts from the reviews above may cover the button, so press it directly.
        dialog.query_one("#edit-save").press()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()

        edit = review.latest_edit(store, "tr-20261204-0003")
        assert edit is not None
        assert edit["note"] == "drop the stray brackets"
        assert edit["report"]["verified"] is True
        assert store.get("traces", "tr-20261204-0003")["review_status"] == "edited"
        assert "edited conversation" in "\n".join(plain(b) for b in screen.query(".conversation-note"))
        assert "The sum is 2." in "\n".join(plain(b) for b in screen.query(".message"))
    store.close()


# -- dataset ---------------------------------------------------------------------------------------


async def test_dataset_funnel_and_build(seeded_copy):
    workspace, pack = seeded_copy
    app = make_app(workspace, pack)
    store = workspace.store()
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("4")
        screen = app.screen
        [existing] = table_keys(screen, "#datasets-table")
        funnel = plain(screen.query_one("#funnel-chart"))
        assert "traces in" in funnel
        assert "verified" in funnel
        assert "rendered" in funnel
        assert "verification" in [str(row[0]) for row in
                                  (screen.query_one("#filters-table").get_row_at(i)
                                   for i in range(screen.query_one("#filters-table").row_count))]

        # A validation fraction out of range is rejected before any job starts.
        fill(screen, {"curate-validation": "1.5"})
        await pilot.click("#build-dataset")
        await pilot.pause()
        assert any("validation fraction must be in [0, 1)" in text for text in errors(app))
        assert store.count("jobs", "kind = 'curate'") == 1

        # A shorter max length changes the manifest, so the build makes a second dataset.
        fill(screen, {"curate-pack": str(pack), "curate-validation": "0", "curate-max-length": "600"})
        await pilot.press("ctrl+s")
        await pilot.pause()
        job = next(store.rows("jobs", "kind = 'curate'", order_by="rowid desc", limit=1))
        assert job["params"]["all"] is True
        assert job["params"]["max_length"] == 600
        await wait_for(pilot, lambda: store.get("jobs", job["id"])["status"] in jobs.TERMINAL_STATUSES,
                       timeout=90)
        assert store.get("jobs", job["id"])["status"] == "succeeded", store.get("jobs", job["id"])["error"]
        await wait_for(pilot, lambda: len(table_keys(screen, "#datasets-table")) == 2)
        new = store.get("jobs", job["id"])["result"]["dataset_id"]
        assert set(table_keys(screen, "#datasets-table")) == {existing, new}
        assert "succeeded" in plain(screen.query_one("#curate-progress .job-status"))
    store.close()


# -- eval ------------------------------------------------------------------------------------------


def write_results(folder: Path) -> tuple[Path, Path]:
    """Two eval result files of one eval set: B loses case add-2 and wins case add-1."""
    from appliance.chat import ToolCall
    from appliance.evaluation.checker import check_case
    from appliance.evaluation.evalset import parse_evalset
    from appliance.evaluation.metrics import EvalResult

    function = [{"name": "add", "parameters": {"type": "dict", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}]
    lines = [{"id": f"add-{i}", "question": [[{"role": "user", "content": f"[{i}] plus one [/x"}]],
              "function": function, "ground_truth": [{"add": {"a": [i], "b": [1]}}],
              "category": "math"} for i in range(4)]
    evalset = parse_evalset("".join(json.dumps(line) + "\n" for line in lines))

    def result(correct: set[int], name: str, tokens: int) -> EvalResult:
        cases = [check_case(case, [ToolCall("add", {"a": index, "b": 1 if index in correct else 2})],
                            prompt_tokens=tokens, completion_tokens=10)
                 for index, case in enumerate(evalset.cases)]
        return EvalResult(evalset_digest=evalset.digest, model={"name": name},
                          settings={"temperature": 0}, cases=cases, id=f"eval-{name}",
                          evalset_name="heldout")

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, correct, tokens in (("teacher", {0, 2, 3}, 900), ("candidate", {0, 1, 3}, 150)):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(result(correct, name, tokens).to_dict()))
        paths.append(path)
    return paths[0], paths[1]


def write_evalset(path: Path, n: int = 3) -> Path:
    """A BFCL-style eval set for the tiny pack: "What is i + 1?" expects add(a=i, b=1)."""
    function = [{"name": "add", "description": "Add two numbers.", "parameters": {
        "type": "dict", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"]}}]
    lines = [{"id": f"sum-{i}", "question": [[{"role": "user", "content": f"What is {i} + 1?"}]],
              "function": function, "ground_truth": [{"add": {"a": [i], "b": [1]}}],
              "category": "sum"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def test_eval_run_jobs_and_compare(seeded_copy, adder_teacher, tmp_path):
    workspace, pack = seeded_copy
    evalset = write_evalset(tmp_path / "sums.jsonl")
    (tmp_path / "broken.json").write_text("{oops")
    store = workspace.store()
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("5")
        screen = app.screen

        fill(screen, {"eval-mode": "sideways"})
        screen.action_start_eval()
        await pilot.pause()
        assert any("mode must be one of" in text for text in errors(app))
        assert store.count("jobs", "kind = 'eval'") == 0

        # Two labelled runs of the loopback teacher through the real runner.
        for label in ("teacher", "again"):
            fill(screen, {"eval-set": str(evalset), "eval-model": adder_teacher,
                          "eval-pack": str(pack), "eval-mode": "first", "eval-label": label})
            await pilot.press("ctrl+s")
            await pilot.pause()
            job = next(store.rows("jobs", "kind = 'eval'", order_by="rowid desc", limit=1))
            await wait_for(pilot, lambda: store.get("jobs", job["id"])["status"]
                           in jobs.TERMINAL_STATUSES)
            assert store.get("jobs", job["id"])["status"] == "succeeded", \
                store.get("jobs", job["id"])["error"]
        await wait_for(pilot, lambda: len(table_keys(screen, "#results-table")) == 2)
        assert "sums" in str(screen.query_one("#results-table").get_row_at(0)[2])

        # Enter on a stored result fills the next empty slot.
        table = screen.query_one("#results-table")
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        table.move_cursor(row=0)
        await pilot.press("enter")
        ids = table_keys(screen, "#results-table")
        assert screen.query_one("#compare-a").value == ids[1]
        assert screen.query_one("#compare-b").value == ids[0]
        screen.action_compare()
        await app.workers.wait_for_complete()
        await pilot.pause()
        configs = plain(screen.query_one("#compare-configs"))
        assert "part first_decision" in configs
        chart = plain(screen.query_one("#metric-chart"))
        assert "accuracy" in chart
        assert "100.0 %" in chart
        assert "3/3" in chart
        assert table_keys(screen, "#changed-cases") == []
        assert "Gate B: pass" in plain(screen.query_one("#compare-gate"))
    store.close()


async def test_eval_compare_result_files(seeded_copy, tmp_path):
    workspace, pack = seeded_copy
    teacher, candidate = write_results(tmp_path / "results")
    (tmp_path / "broken.json").write_text("{oops")
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("5")
        screen = app.screen
        fill(screen, {"compare-a": str(teacher), "compare-b": str(tmp_path / "broken.json")})
        screen.action_compare()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert any("not valid JSON" in text for text in errors(app))

        fill(screen, {"compare-b": str(candidate)})
        screen.action_compare()
        await app.workers.wait_for_complete()
        await pilot.pause()
        chart = plain(screen.query_one("#metric-chart"))
        assert "accuracy" in chart
        assert "75.0 %" in chart
        assert "3/4" in chart
        assert "category:math" in chart
        assert table_keys(screen, "#changed-cases") == ["B:pass_to_fail:add-2", "B:fail_to_pass:add-1"]
        assert table_keys(screen, "#tokens-table") == ["A", "B"]
        tokens = screen.query_one("#tokens-table")
        assert str(tokens.get_row("A")[1]) == "910.0"
        assert "Gate" in plain(screen.query_one("#compare-gate"))


def module_available(name: str) -> bool:
    from tui.screens.overview import module_available as available

    return available(name)


# -- train -----------------------------------------------------------------------------------------


async def test_train_form_jobs_per_base_rank(seeded_copy, monkeypatch):
    workspace, pack = seeded_copy
    dataset_id = next(workspace.store().rows("datasets"))["id"]
    app = make_app(workspace, pack)
    launched: list[tuple[str, dict]] = []
    # The training tests train real models. This test checks how the form maps to job
    # parameters, so launching here only records the request.
    monkeypatch.setattr(app, "launch_job", lambda kind, params: launched.append((kind, params))
                        or f"job-{len(launched)}")
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("6")
        screen = app.screen
        fill(screen, {"train-bases": "embedded, hf:embedded", "train-dataset": dataset_id,
                      "train-r": "8,16", "train-max-steps": "5"})
        screen.action_launch_training()
        await pilot.pause()
        assert [params["base"] for _, params in launched] == ["embedded", "embedded",
                                                              "hf:embedded", "hf:embedded"]
        assert [params["config"]["r"] for _, params in launched] == [8, 16, 8, 16]
        assert [params["config"]["lora_alpha"] for _, params in launched] == [16, 32, 16, 32]
        assert {kind for kind, _ in launched} == {"train"}
        assert {params["config"]["max_steps"] for _, params in launched} == {5}

        launched.clear()
        for values, message in (({"train-dataset": "ds-missing"}, "dataset 'ds-missing' not found"),
                                ({"train-dataset": dataset_id, "train-r": "x"}, "whole numbers"),
                                ({"train-r": "8", "train-lr": "-1"}, "learning_rate must be > 0")):
            fill(screen, values)
            screen.action_launch_training()
            await pilot.pause()
            assert any(message in text for text in errors(app)), errors(app)
        assert launched == []


async def test_train_loss_curve_rates_and_cancel(seeded_copy):
    import os

    from appliance.jobs import JobContext

    workspace, pack = seeded_copy
    store = workspace.store()
    job_id = jobs.create(store, "train", {"base": "embedded", "dataset": "ds-x", "config": {"r": 8}})
    store.update("jobs", job_id, {"status": "running", "pid": os.getpid()})
    # The trainer's reporter writes exactly these events and progress fields.
    context = JobContext(workspace, store, job_id)
    for step in range(1, 11):
        context.event("loss", step=step, loss=2.0 / step)
    context.event("loss", step=10, loss=0.2, val_loss=0.35)
    context.progress(10, 40, message="loss 0.2000  512 tok/s", loss=0.2, tokens_per_s=512.0,
                     eta_s=125.0, lr=1.5e-4)
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("6")
        screen = app.screen
        assert table_keys(screen, "#train-jobs") == [job_id]
        rates = plain(screen.query_one("#train-rates"))
        assert "512 tokens/s" in rates
        assert "ETA 2:05" in rates
        plot = screen.query_one("#loss-plot")
        assert screen._plotted[0] == job_id
        rendered = plot.plt.build()
        assert "train" in rendered
        assert "validation" in rendered

        await pilot.press("ctrl+x")
        await pilot.pause()
        assert store.get("jobs", job_id)["status"] == "cancel_requested"
        with pytest.raises(jobs.JobCancelled):
            context.check_cancel()
    store.close()


# -- bundles ---------------------------------------------------------------------------------------


async def test_bundles_freeze_sign_verify_export_import(seeded_copy, tmp_path):
    from textual.widgets import Input

    from bundles import keys
    from tests.test_bundle import make_adapter, metadata

    workspace, pack = seeded_copy
    passphrase = "console test passphrase"
    keys.init_key(workspace, passphrase, name="site-console")
    adapter = make_adapter(tmp_path / "adapter")
    metadata_path = tmp_path / "metadata.json"
    values = metadata()
    values.pop("operator")
    metadata_path.write_text(json.dumps(values))

    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("7")
        screen = app.screen
        assert table_keys(screen, "#versions-table") == []

        async def submit(fields: dict[str, str]) -> None:
            await pilot.pause()
            for field, value in fields.items():
                app.screen.query_one(f"#field-{field}", Input).value = value
            app.screen.query_one("#form-ok").press()
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()

        await pilot.press("f")
        await submit({"adapter": str(adapter), "metadata": str(metadata_path), "operator": "carol"})
        [digest] = table_keys(screen, "#versions-table")
        assert "frozen" in plain(screen.query_one("#bundle-result"))

        await pilot.press("s")
        await submit({"passphrase": "wrong passphrase"})
        assert errors(app), "a wrong passphrase must be reported"
        await pilot.press("s")
        await submit({"passphrase": passphrase})
        assert "signed" in plain(screen.query_one("#bundle-result"))

        await pilot.press("v")
        await app.workers.wait_for_complete()
        await pilot.pause()
        result = plain(screen.query_one("#bundle-result"))
        assert f"verified {digest}" in result
        assert "site-console" in result

        archive = tmp_path / "out" / "bundle.tar.gz"
        await pilot.press("x")
        await submit({"out": str(archive)})
        assert archive.is_file()

        await pilot.press("i")
        await submit({"archive": str(archive)})
        assert "already installed" in plain(screen.query_one("#bundle-result"))

        await pilot.press("i")
        await submit({"archive": str(tmp_path / "missing.tar")})
        assert "not found" in plain(screen.query_one("#bundle-result"))


# -- ledger ----------------------------------------------------------------------------------------


async def test_ledger_versions_verify_and_tamper(seeded_copy):
    import hashlib

    from tests.ledger_helpers import tamper

    workspace, pack = seeded_copy
    path = workspace.ledger_path
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    app = make_app(workspace, pack)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("8")
        screen = app.screen
        assert table_keys(screen, "#versions-ledger") == ["sha256:" + "a" * 64]
        assert table_keys(screen, "#version-entries") == ["1", "2", "3"]
        entries = screen.query_one("#version-entries")
        assert "accuracy 0.850 [0.800, 0.900] n=40" in str(entries.get_row("3")[4])
        assert "reckoning.test/ledger" in plain(screen.query_one("#checkpoint-note"))

        await pilot.press("v")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert plain(screen.query_one("#verify-result")).startswith("OK: 4 entries")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before

        tamper(path, ("UPDATE entries SET body = replace(body, '0.85', '0.95') WHERE idx = 3", ()))
        await pilot.press("v")
        await app.workers.wait_for_complete()
        await pilot.pause()
        result = plain(screen.query_one("#verify-result"))
        assert result.startswith("FAILED")
        assert "problem:" in result


# -- command line ----------------------------------------------------------------------------------


def test_reckon_tui_uses_home(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from appliance.cli import cli
    from tui.app import ReckonApp

    opened = {}
    monkeypatch.setattr(ReckonApp, "run", lambda self: opened.update(
        root=self.workspace.root, pack=self.pack, poll=self.poll_interval))
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "ws"), "tui", "--pack", "tiny",
                                      "--poll", "2"])
    assert result.exit_code == 0, result.output
    assert opened == {"root": (tmp_path / "ws").resolve(), "pack": "tiny", "poll": 2.0}

    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "ws"), "tui", "--poll", "0"])
    assert result.exit_code != 0
    assert "--poll" in result.output


async def test_poll_timer_shows_new_traces(seeded_copy):
    from appliance.store import new_id

    workspace, pack = seeded_copy
    app = make_app(workspace, pack, poll_interval=0.2)
    async with app.run_test(size=(150, 45)) as pilot:
        await pilot.press("3")
        assert len(table_keys(app.screen, "#traces-table")) == 5

        # Another process (here: another connection) records a trace; the timer shows it.
        store = workspace.store()
        trace = store.get("traces", "tr-20261204-0002")
        store.insert("traces", {**trace, "id": new_id("tr"), "created_at": trace["created_at"] + 100})
        store.close()
        deadline = time.monotonic() + 10
        while len(table_keys(app.screen, "#traces-table")) < 6 and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert len(table_keys(app.screen, "#traces-table")) == 6
