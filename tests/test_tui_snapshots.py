"""Snapshot tests of every console screen (pytest-textual-snapshot).

Each test copies the seeded workspace of tests/test_tui.py to one fixed folder, because
the header shows the workspace path. Ids and timestamps in that workspace are fixed, so
the screens render the same on every run. Update the SVGs under tests/__snapshots__/ with
`pytest tests/test_tui_snapshots.py --snapshot-update` after a deliberate change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance import jobs
from appliance.workspace import Workspace
from tests.test_tui import fixed_clock, make_app, seeded_root, write_results

# Fixed, so the header line is the same everywhere.
SNAPSHOT_ROOT = Path("/tmp/reckon-tui-snapshots")
SIZE = (150, 45)


@pytest.fixture
def snapshot_workspace(tmp_path_factory) -> tuple[Workspace, Path]:
    source = seeded_root(tmp_path_factory)
    shutil.rmtree(SNAPSHOT_ROOT, ignore_errors=True)
    shutil.copytree(source, SNAPSHOT_ROOT, symlinks=True)
    return Workspace(SNAPSHOT_ROOT / "home"), SNAPSHOT_ROOT / "tiny-pack"


def app_for(snapshot_workspace):
    workspace, pack = snapshot_workspace
    return make_app(workspace, pack)


def test_overview_snapshot(snap_compare, snapshot_workspace):
    assert snap_compare(app_for(snapshot_workspace), terminal_size=SIZE)


def test_runs_snapshot(snap_compare, snapshot_workspace):
    assert snap_compare(app_for(snapshot_workspace), press=["2"], terminal_size=SIZE)


def test_traces_snapshot(snap_compare, snapshot_workspace):
    async def select_markup_trace(pilot):
        screen = pilot.app.screen
        table = screen.query_one("#traces-table")
        table.move_cursor(row=3)     # tr-20261204-0003: the answer with "[0]" and "[/x]"
        table.focus()
        await pilot.pause()

    assert snap_compare(app_for(snapshot_workspace), terminal_size=SIZE,
                        run_before=_after_keys(["3"], select_markup_trace))


def test_trace_tool_error_snapshot(snap_compare, snapshot_workspace):
    async def select_tool_error(pilot):
        table = pilot.app.screen.query_one("#traces-table")
        table.move_cursor(row=2)     # tr-20261204-0004: unknown tool with brackets in its name
        table.focus()
        await pilot.pause()

    assert snap_compare(app_for(snapshot_workspace), terminal_size=SIZE,
                        run_before=_after_keys(["3"], select_tool_error))


def test_dataset_snapshot(snap_compare, snapshot_workspace):
    assert snap_compare(app_for(snapshot_workspace), press=["4"], terminal_size=SIZE)


def test_eval_snapshot(snap_compare, snapshot_workspace):
    teacher, candidate = write_results(SNAPSHOT_ROOT / "results")

    async def compare(pilot):
        from textual.widgets import Input

        await pilot.press("5")
        screen = pilot.app.screen
        screen.query_one("#compare-a", Input).value = str(teacher)
        screen.query_one("#compare-b", Input).value = str(candidate)
        screen.action_compare()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(app_for(snapshot_workspace), terminal_size=SIZE, run_before=compare)


def test_train_snapshot(snap_compare, snapshot_workspace):
    from appliance.jobs import JobContext

    workspace, _ = snapshot_workspace
    store = workspace.store()
    with fixed_clock(start=1796378400.0):
        job_id = jobs.create(store, "train", {"base": "embedded", "dataset": "ds-582b9f8ad6ce",
                                              "config": {"r": 8}})
        store.update("jobs", job_id, {"status": "succeeded", "finished_at": 1796378500.0})
        context = JobContext(workspace, store, job_id)
        for step in range(1, 21):
            context.event("loss", step=step, loss=round(2.4 / step ** 0.5, 4))
            if step % 5 == 0:
                context.event("loss", step=step, loss=round(2.4 / step ** 0.5, 4),
                              val_loss=round(2.6 / step ** 0.45, 4))
        context.progress(20, 20, message="loss 0.5367  480 tok/s", loss=0.5367,
                         tokens_per_s=480.0, eta_s=0.0, lr=2e-5)
    store.close()
    assert snap_compare(app_for(snapshot_workspace), press=["6"], terminal_size=SIZE)


def test_bundles_snapshot(snap_compare, snapshot_workspace):
    assert snap_compare(app_for(snapshot_workspace), press=["7"], terminal_size=SIZE)


def test_ledger_snapshot(snap_compare, snapshot_workspace):
    async def verify(pilot):
        await pilot.press("8")
        await pilot.press("v")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(app_for(snapshot_workspace), terminal_size=SIZE, run_before=verify)


def test_help_snapshot(snap_compare, snapshot_workspace):
    assert snap_compare(app_for(snapshot_workspace), press=["question_mark"], terminal_size=SIZE)


def _after_keys(keys, then):
    async def run(pilot):
        for key in keys:
            await pilot.press(key)
        await then(pilot)

    return run
