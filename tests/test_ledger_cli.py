"""`reckon ledger` commands, the stand-alone export verifier and the HTML report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from audit.ledger import Ledger
from tests.ledger_helpers import eval_payload

VERSION = "sha256:v1"

# Runs verify_standalone.py with an import hook that fails any import of this repository's
# packages, in isolated mode (-I: no PYTHONPATH, no user site, no script folder on sys.path).
ISOLATED_RUNNER = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'appliance', 'audit', 'tools', 'bundles', 'tui', 'tests'}:
            raise ImportError('blocked import of ' + name)
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.fixture
def home(tmp_path):
    return tmp_path / "workspace"


def reckon(home, *args, json_output=False):
    arguments = ["--home", str(home)] + (["--json"] if json_output else []) + ["ledger", *args]
    return CliRunner().invoke(cli, arguments, catch_exceptions=False)


def write_payload(tmp_path, payload, name="payload.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return str(path)


@pytest.fixture
def populated(home, tmp_path):
    for value in (0.7, 0.8):
        result = reckon(home, "append", "--kind", "eval", "--file",
                        write_payload(tmp_path, eval_payload(VERSION, value)), "--operator", "alice")
        assert result.exit_code == 0, result.output
    result = reckon(home, "append", "--kind", "freeze", "--file",
                    write_payload(tmp_path, {"version": VERSION, "bundle": "bundle-1"}))
    assert result.exit_code == 0, result.output
    return home / "ledger" / "ledger.db"


def run_standalone(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", ISOLATED_RUNNER, "verify_standalone.py", *args],
                          cwd=folder, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


def test_append_json_output(home, tmp_path):
    result = reckon(home, "append", "--kind", "eval", "--file",
                    write_payload(tmp_path, eval_payload()), json_output=True)
    data = json.loads(result.output)
    assert data["index"] == 1
    assert data["checkpoint_size"] == 2


def test_append_missing_field_names_it(home, tmp_path):
    payload = eval_payload()
    del payload["metrics"]
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "append", "--kind", "eval",
                                      "--file", write_payload(tmp_path, payload)])
    assert result.exit_code != 0
    assert "'metrics' is missing" in str(result.exception)


def test_append_invalid_json_names_line(home, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "version": "x",\n  oops\n}')
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "append", "--kind", "freeze",
                                      "--file", str(path)])
    assert result.exit_code != 0
    assert f"{path}:3:" in str(result.exception)


def test_show_version_table_and_json(populated, home):
    result = reckon(home, "show", "--version", VERSION)
    assert result.exit_code == 0
    assert "accuracy" in result.output
    assert "freeze" in result.output
    data = json.loads(reckon(home, "show", "--version", VERSION, json_output=True).output)
    assert [entry["kind"] for entry in data] == ["eval", "eval", "freeze"]
    assert data[0]["payload"]["metrics"]["accuracy"]["interval"] == pytest.approx([0.65, 0.75])


def test_verify_and_checkpoint_file(populated, home, tmp_path):
    old = tmp_path / "old.note"
    result = reckon(home, "checkpoint")
    old.write_text(result.output)
    reckon(home, "append", "--kind", "eval", "--file", write_payload(tmp_path, eval_payload()))
    result = reckon(home, "verify", "--checkpoint", str(old))
    assert result.exit_code == 0, result.output
    assert "consistent with the given checkpoint (size 4) -> size 5" in result.output
    data = json.loads(reckon(home, "verify", json_output=True).output)
    assert data["ok"] is True


def test_verify_names_edited_entry(populated, home):
    from tests.ledger_helpers import tamper

    with Ledger.open(populated, read_only=True) as ledger:
        body = ledger.entry(2).body.replace(b"alice", b"mallo")
    tamper(populated, ("UPDATE entries SET body = ? WHERE idx = 2", (body.decode(),)))
    result = reckon(home, "verify")
    assert result.exit_code == 1
    assert "problem: entry 2: its contents do not match" in result.output


def test_auditor_commands_leave_file_unchanged(populated, home, tmp_path):
    before = populated.read_bytes()
    mtime = populated.stat().st_mtime_ns
    assert reckon(home, "verify").exit_code == 0
    assert reckon(home, "show", "--version", VERSION).exit_code == 0
    assert reckon(home, "proof", "--index", "1").exit_code == 0
    assert reckon(home, "export", str(tmp_path / "out" / "export.json")).exit_code == 0
    assert reckon(home, "report", "--version", VERSION, str(tmp_path / "r.html")).exit_code == 0
    assert populated.read_bytes() == before
    assert populated.stat().st_mtime_ns == mtime


def test_proof_commands(populated, home):
    data = json.loads(reckon(home, "proof", "--index", "2", json_output=True).output)
    assert data["type"] == "inclusion"
    assert data["size"] == 4
    data = json.loads(reckon(home, "proof", "--old-size", "2", json_output=True).output)
    assert data["type"] == "consistency"
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "proof"])
    assert result.exit_code == 2
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "proof", "--index", "99"])
    assert "entry 99 does not exist" in str(result.exception)


def test_standalone_verifier_accepts_export(populated, home, tmp_path):
    old = tmp_path / "old.note"
    old.write_text(reckon(home, "checkpoint").output)
    reckon(home, "append", "--kind", "eval", "--file", write_payload(tmp_path, eval_payload()))
    folder = tmp_path / "export"
    result = reckon(home, "export", str(folder / "export.json"))
    assert result.exit_code == 0, result.output
    assert (folder / "verify_standalone.py").is_file()

    completed = run_standalone(folder, "export.json", "--public-key", "ledger.pub",
                               "--checkpoint", str(old))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "VERIFIED" in completed.stdout
    assert "the ledger only grew since" in completed.stdout


def test_standalone_verifier_detects_edit(populated, home, tmp_path):
    folder = tmp_path / "export"
    reckon(home, "export", str(folder / "export.json"))
    document = json.loads((folder / "export.json").read_text())
    document["entries"][1]["body"] = document["entries"][1]["body"].replace('"value":0.7', '"value":0.9')
    (folder / "export.json").write_text(json.dumps(document))

    completed = run_standalone(folder, "export.json", "--public-key", "ledger.pub")
    assert completed.returncode == 1
    assert "FAILED: entry 1: its contents do not match its leaf hash" in completed.stdout


def test_standalone_verifier_detects_forged_hashes(populated, home, tmp_path):
    import base64
    import hashlib

    folder = tmp_path / "export"
    reckon(home, "export", str(folder / "export.json"))
    document = json.loads((folder / "export.json").read_text())
    body = document["entries"][2]["body"].replace('"alice"', '"bobby"')
    document["entries"][2]["body"] = body
    document["entries"][2]["leaf_hash"] = base64.b64encode(
        hashlib.sha256(b"\x00" + body.encode()).digest()).decode()
    (folder / "export.json").write_text(json.dumps(document))

    completed = run_standalone(folder, "export.json", "--public-key", "ledger.pub")
    assert completed.returncode == 1
    assert "entry 2: its inclusion proof does not lead to the signed root" in completed.stdout


def test_standalone_verifier_rejects_other_key(populated, home, tmp_path):
    from audit.note import Signer

    folder = tmp_path / "export"
    reckon(home, "export", str(folder / "export.json"))
    with Ledger.open(populated, read_only=True) as ledger:
        origin = ledger.origin
    (folder / "other.pub").write_text(Signer.generate(origin).verifier.vkey())
    completed = run_standalone(folder, "export.json", "--public-key", "other.pub")
    assert completed.returncode == 1
    assert "not signed by the trusted key" in completed.stdout


def test_partial_export_by_version(populated, home, tmp_path):
    folder = tmp_path / "partial"
    reckon(home, "append", "--kind", "eval", "--file",
           write_payload(tmp_path, eval_payload("sha256:other")))
    reckon(home, "export", str(folder / "export.json"), "--version", VERSION)
    document = json.loads((folder / "export.json").read_text())
    assert document["complete"] is False
    assert [entry["index"] for entry in document["entries"]] == [1, 2, 3]
    completed = run_standalone(folder, "export.json", "--public-key", "ledger.pub")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "partial export" in completed.stdout


def test_report_escapes_text(home, tmp_path):
    payload = eval_payload(VERSION)
    payload["metrics"]["<b>bold</b>"] = {"value": 0.5, "interval": [0.4, 0.6], "n": 10}
    payload["runtime"]["model"] = "<script>alert(1)</script>"
    reckon(home, "append", "--kind", "eval", "--file", write_payload(tmp_path, payload),
           "--operator", "eve<img src=x onerror=alert(2)>")
    out = tmp_path / "report.html"
    result = reckon(home, "report", "--version", VERSION, str(out))
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "eve&lt;img src=x onerror=alert(2)&gt;" in html
    assert "verified" in html
    assert "included in checkpoint of size 2" in html


def test_report_unknown_version(populated, home, tmp_path):
    result = CliRunner().invoke(cli, ["--home", str(home), "ledger", "report", "--version",
                                      "sha256:nope", str(tmp_path / "r.html")])
    assert "no entries for version sha256:nope" in str(result.exception)


def test_public_key_command(populated, home):
    result = reckon(home, "public-key")
    assert result.output.strip() == (populated.parent / "ledger.pub").read_text().strip()
