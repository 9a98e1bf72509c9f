"""The quick demo, end to end, inside a network namespace with no usable interface.

This is the main job a newcomer runs from the README. It uses the real embedded model for
the teacher, the evals and training, real signing and the real ledger, so it is the
longest test of the suite (about 15-20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _can_unshare() -> str | None:
    if os.geteuid() != 0:
        return "unshare -n needs root"
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -n failed here: {probe.stderr.decode().strip()}"
    return None


@pytest.mark.skipif(_can_unshare() is not None, reason=str(_can_unshare()))
def test_quick_demo_without_network(tmp_path):
    home = tmp_path / "workspace"
    export = tmp_path / "bundle.tar.gz"
    env = {**os.environ, "RECKON_HOME": str(home), "RECKON_KEY_PASSPHRASE": "air-gapped demo key"}
    command = ["unshare", "-n", sys.executable, "-m", "appliance.cli", "--json", "demo",
               "--preset", "quick", "--export", str(export)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout)

    assert export.is_file()
    assert Path(result["paths"]["bundle"]).is_dir()
    assert (Path(result["paths"]["bundle"]) / "model.sig").is_file()
    assert Path(result["paths"]["ledger"]).is_file()
    report = Path(result["paths"]["report"]).read_text(encoding="utf-8")
    assert "tool_name_accuracy" in report
    metrics = {row["metric"] for row in result["table"]}
    assert {"tool_name_accuracy", "exact_call_accuracy"} <= metrics

    # The exported archive imports into a second workspace that trusts the site key.
    second = tmp_path / "receiving-site"
    public_key = tmp_path / "site.pub"
    run = lambda *args, home_dir: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "appliance.cli", "--home", str(home_dir), *args],
        env=env, capture_output=True, text=True, timeout=300)
    exported = run("keys", "export-public", str(public_key), home_dir=home)
    assert exported.returncode == 0, exported.stderr
    trusted = run("keys", "import-public", "origin-site", str(public_key), home_dir=second)
    assert trusted.returncode == 0, trusted.stderr
    imported = run("bundle", "import", str(export), home_dir=second)
    assert imported.returncode == 0, imported.stderr

    # The ledger verifies read-only.
    verified = run("ledger", "verify", home_dir=home)
    assert verified.returncode == 0, verified.stdout + verified.stderr
