"""The site signing key and the keyring: library functions and the `reckon keys` CLI."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.cli import cli
from appliance.workspace import Workspace
from bundles import keys
from bundles.errors import KeyringError

PASSPHRASE = "correct horse battery"


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.create()
    return ws


def write_public_key(path, curve=ec.SECP256R1()):
    key = ec.generate_private_key(curve)
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def test_init_writes_encrypted_key_0600(workspace):
    info = keys.init_key(workspace, PASSPHRASE, name="site-a")

    private_path = keys.private_key_path(workspace)
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in private_path.read_bytes()
    assert info.name == "site-a"
    assert len(info.fingerprint) == 64
    assert keys.site_key_info(workspace).fingerprint == info.fingerprint
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(private_path.read_bytes(), None)
    loaded = keys.load_private_key(workspace, PASSPHRASE)
    assert keys.fingerprint_of(loaded.public_key()) == info.fingerprint


def test_init_rejects_existing_key(workspace):
    first = keys.init_key(workspace, PASSPHRASE, name="site-a")

    with pytest.raises(KeyringError, match="already exists.*--force"):
        keys.init_key(workspace, PASSPHRASE, name="site-a")
    assert keys.site_key_info(workspace).fingerprint == first.fingerprint


def test_init_force_archives_old_key(workspace):
    first = keys.init_key(workspace, PASSPHRASE, name="site-a")
    second = keys.init_key(workspace, PASSPHRASE, name="site-a", force=True)

    assert second.fingerprint != first.fingerprint
    archived = list((workspace.keys / "archive").glob("*/site_key.pub.pem"))
    assert len(archived) == 1
    assert keys.fingerprint_of(keys.load_public_key(archived[0])) == first.fingerprint
    archived_private = archived[0].parent / "site_key.pem"
    assert stat.S_IMODE(os.stat(archived_private).st_mode) == 0o600


def test_wrong_passphrase_rejected(workspace):
    keys.init_key(workspace, PASSPHRASE)

    with pytest.raises(KeyringError, match="wrong passphrase"):
        keys.load_private_key(workspace, "not the passphrase")


def test_short_passphrase_rejected(workspace):
    with pytest.raises(KeyringError, match="at least 8"):
        keys.init_key(workspace, "short")
    assert not keys.has_site_key(workspace)


def test_import_public_and_list(workspace, tmp_path):
    own = keys.init_key(workspace, PASSPHRASE, name="site-a")
    other = tmp_path / "other.pub.pem"
    write_public_key(other)

    imported = keys.import_public(workspace, "site-b", other)

    listed = keys.list_keys(workspace)
    assert [key.name for key in listed] == ["site-a", "site-b"]
    assert listed[0].fingerprint == own.fingerprint
    assert listed[0].own
    assert listed[1].fingerprint == imported.fingerprint
    assert not listed[1].own
    assert keys.find_key(workspace, imported.fingerprint).name == "site-b"


@pytest.mark.parametrize("name", ["../escape", "", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_import_public_invalid_name(workspace, tmp_path, name):
    source = tmp_path / "other.pem"
    write_public_key(source)

    with pytest.raises(KeyringError, match="invalid key name"):
        keys.import_public(workspace, name, source)
    assert list(workspace.keyring.iterdir()) == []


def test_import_public_rejects_private_key(workspace, tmp_path):
    source = tmp_path / "private.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    source.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))

    with pytest.raises(KeyringError, match="contains a private key"):
        keys.import_public(workspace, "site-b", source)


def test_import_public_rejects_other_curve(workspace, tmp_path):
    source = tmp_path / "p384.pem"
    write_public_key(source, ec.SECP384R1())

    with pytest.raises(KeyringError, match="not an ECDSA P-256"):
        keys.import_public(workspace, "site-b", source)


def test_import_public_rejects_garbage(workspace, tmp_path):
    source = tmp_path / "garbage.pem"
    source.write_text("hello\n")

    with pytest.raises(KeyringError, match="not a PEM public key"):
        keys.import_public(workspace, "site-b", source)


def test_import_public_duplicates(workspace, tmp_path):
    first = tmp_path / "first.pem"
    second = tmp_path / "second.pem"
    write_public_key(first)
    write_public_key(second)
    keys.import_public(workspace, "site-b", first)

    with pytest.raises(KeyringError, match="already has a key named"):
        keys.import_public(workspace, "site-b", second)
    with pytest.raises(KeyringError, match="already trusted as 'site-b'"):
        keys.import_public(workspace, "site-c", first)
    replaced = keys.import_public(workspace, "site-b", second, force=True)
    assert keys.find_key(workspace, replaced.fingerprint).name == "site-b"


def test_site_key_missing(workspace):
    with pytest.raises(KeyringError, match="reckon keys init"):
        keys.site_key_info(workspace)


# -- CLI -------------------------------------------------------------------------------------


def run_cli(workspace, *args, env=None, input=None):
    runner = CliRunner()
    return runner.invoke(cli, ["--home", str(workspace.root), *args], env=env, input=input)


def test_cli_keys_round_trip(workspace, tmp_path, caplog):
    caplog.set_level("DEBUG")
    env = {keys.PASSPHRASE_ENV: PASSPHRASE}

    init = run_cli(workspace, "keys", "init", "--name", "site-a", env=env)
    assert init.exit_code == 0, init.output
    assert PASSPHRASE not in init.output

    shown = run_cli(workspace, "--json", "keys", "show")
    assert shown.exit_code == 0, shown.output
    fingerprint = json.loads(shown.output)["fingerprint"]
    assert fingerprint == keys.site_key_info(workspace).fingerprint

    exported = run_cli(workspace, "keys", "export-public")
    assert exported.exit_code == 0
    assert exported.output.startswith("-----BEGIN PUBLIC KEY-----")
    out = tmp_path / "site-a.pub.pem"
    assert run_cli(workspace, "keys", "export-public", str(out)).exit_code == 0
    assert out.read_text() == exported.output

    other = tmp_path / "b.pem"
    write_public_key(other)
    imported = run_cli(workspace, "keys", "import-public", "site-b", str(other))
    assert imported.exit_code == 0, imported.output

    listed = run_cli(workspace, "--json", "keys", "list")
    names = [entry["name"] for entry in json.loads(listed.output)]
    assert names == ["site-a", "site-b"]

    again = run_cli(workspace, "keys", "init", "--name", "site-a", env=env)
    assert isinstance(again.exception, KeyringError)

    assert "created site key site-a" in caplog.text
    assert PASSPHRASE not in caplog.text


def test_cli_keys_init_prompts_for_passphrase(workspace):
    result = run_cli(workspace, "keys", "init", "--name", "site-a",
                     env={keys.PASSPHRASE_ENV: ""}, input=f"{PASSPHRASE}\n{PASSPHRASE}\n")

    assert result.exit_code == 0, result.output
    assert keys.load_private_key(workspace, PASSPHRASE)
    assert PASSPHRASE not in result.output
