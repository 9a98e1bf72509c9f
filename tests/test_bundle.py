"""Freeze, sign, verify, export and import bundles, including every tampering case."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from appliance.workspace import Workspace
from bundles import keys
from bundles.archive import export_version, import_archive
from bundles.errors import ArchiveError, BundleError, IntegrityError, VersionNotFoundError
from bundles.freeze import freeze, list_versions, load_version
from bundles.manifest import make_read_only, make_writable, sha256_bytes, sha256_file
from bundles.sign import sign_version, verify_bundle

PASSPHRASE = "bundle test passphrase"
MODEL_SIGNING_CLI = Path(sys.executable).parent / "model_signing"


def metadata(**overrides):
    values = dict(
        base_identity={"name": "gemma-3-270m-q4_k_m", "path": "/models/base.gguf",
                       "weights_sha256": "ab" * 32},
        dataset_digest="sha256:" + "11" * 32, evalset_digest="sha256:" + "22" * 32,
        eval_summary={"task_success": 0.81, "n_cases": 120},
        pack_id="entitlements", pack_digest="sha256:" + "33" * 32,
        prompt_format="reckon-specialist-v1",
        training_config={"r": 4, "lora_alpha": 8, "epochs": 2, "seed": 7},
        operator="alice")
    values.update(overrides)
    return values


def make_adapter(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "gemma-3-270m"}))
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.model.layers.0.self_attn"
    save_file({f"{prefix}.q_proj.lora_A.weight": rng.normal(size=(4, 16)).astype(np.float32),
               f"{prefix}.q_proj.lora_B.weight": rng.normal(size=(16, 4)).astype(np.float32)},
              str(folder / "adapter_model.safetensors"))
    (folder / "README.md").write_text("peft model card\n")
    return folder


def new_workspace(path: Path, site: str | None) -> Workspace:
    workspace = Workspace(path)
    workspace.create()
    if site:
        keys.init_key(workspace, PASSPHRASE, name=site)
    return workspace


@pytest.fixture
def sender(tmp_path):
    return new_workspace(tmp_path / "sender", "site-a")


@pytest.fixture
def receiver(tmp_path, sender):
    workspace = new_workspace(tmp_path / "receiver", "site-b")
    keys.import_public(workspace, "site-a", keys.public_key_path(sender))
    return workspace


@pytest.fixture
def signed(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())
    sign_version(sender, version.digest, PASSPHRASE)
    return version


@pytest.fixture
def archive(tmp_path, sender, signed):
    return export_version(sender, signed.digest, tmp_path / "bundle.tar")


def model_signing_verify(bundle: Path, public_key: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MODEL_SIGNING_CLI), "verify", "key",
                           "--signature", str(bundle / "model.sig"),
                           "--public_key", str(public_key), str(bundle)],
                          capture_output=True, text=True, timeout=120)


# -- freeze ----------------------------------------------------------------------------------


def test_freeze_layout_and_manifest(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    assert version.path == sender.bundles / version.digest
    files = sorted(str(path.relative_to(version.path)) for path in version.path.rglob("*")
                   if path.is_file())
    assert files == ["SHA256SUMS", "adapter/adapter_config.json",
                     "adapter/adapter_model.safetensors", "manifest.json"]
    assert sha256_file(version.path / "SHA256SUMS") == version.digest

    manifest = json.loads((version.path / "manifest.json").read_text())
    assert manifest["files"]["adapter/adapter_model.safetensors"]["sha256"] == sha256_file(
        tmp_path / "adapter" / "adapter_model.safetensors")
    assert manifest["base_model"]["weights_sha256"] == "ab" * 32
    assert manifest["dataset_digest"] == "sha256:" + "11" * 32
    assert manifest["evalset_digest"] == "sha256:" + "22" * 32
    assert manifest["eval_summary"] == {"task_success": 0.81, "n_cases": 120}
    assert manifest["pack"] == {"id": "entitlements", "digest": "sha256:" + "33" * 32}
    assert manifest["prompt_format"] == "reckon-specialist-v1"
    assert manifest["training_config"]["r"] == 4
    assert manifest["operator"] == "alice"
    assert manifest["created_at"]
    for library in ("torch", "transformers", "peft", "llama_cpp", "appliance"):
        assert library in manifest["libraries"]
    assert manifest["libraries"]["appliance"]


def test_freeze_is_read_only(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    assert stat.S_IMODE(os.stat(version.path).st_mode) == 0o555
    assert stat.S_IMODE(os.stat(version.path / "manifest.json").st_mode) == 0o444
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (version.path / "manifest.json").write_text("{}")


def test_freeze_checks_with_sha256sum(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=version.path,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    summed = subprocess.run(["sha256sum", "SHA256SUMS"], cwd=version.path,
                            capture_output=True, text=True)
    assert summed.stdout.split()[0] == version.digest


def test_freeze_records_versions_row(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    rows = list_versions(sender)
    assert [row["id"] for row in rows] == [version.digest]
    assert rows[0]["source"] == "frozen"
    assert rows[0]["pack_id"] == "entitlements"
    assert rows[0]["base_weights_sha256"] == "ab" * 32
    assert rows[0]["manifest"]["adapter_digest"] == version.manifest["adapter_digest"]
    assert rows[0]["present"]


def test_freeze_same_candidate_twice(tmp_path, sender):
    adapter = make_adapter(tmp_path / "adapter")
    first = freeze(sender, adapter, **metadata())
    again = freeze(sender, adapter, **metadata(operator="bob"))
    changed = freeze(sender, adapter, **metadata(eval_summary={"task_success": 0.5}))

    assert again.digest == first.digest
    assert changed.digest != first.digest
    assert len(list_versions(sender)) == 2


def test_freeze_includes_gguf_and_modelfile(tmp_path, sender):
    adapter = make_adapter(tmp_path / "adapter")
    (adapter / "lora.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (adapter / "Modelfile").write_text("FROM /models/base.gguf\nADAPTER ./adapter.gguf\n")

    version = freeze(sender, adapter, **metadata())

    assert (version.path / "adapter" / "adapter.gguf").is_file()
    assert (version.path / "Modelfile").is_file()
    assert "adapter/adapter.gguf" in version.manifest["files"]


@pytest.mark.parametrize("case, expected", [
    ("no_weights", "adapter_model.safetensors is missing"),
    ("not_lora", "expected 'LORA'"),
    ("bad_safetensors", "not a readable safetensors"),
    ("two_gguf", "more than one .gguf"),
    ("bad_gguf", "not a GGUF file"),
])
def test_freeze_rejects_bad_adapter(tmp_path, sender, case, expected):
    adapter = make_adapter(tmp_path / "adapter")
    if case == "no_weights":
        (adapter / "adapter_model.safetensors").unlink()
    elif case == "not_lora":
        (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    elif case == "bad_safetensors":
        (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors")
    elif case == "two_gguf":
        (adapter / "a.gguf").write_bytes(b"GGUF")
        (adapter / "b.gguf").write_bytes(b"GGUF")
    elif case == "bad_gguf":
        (adapter / "a.gguf").write_bytes(b"ZZZZ")

    with pytest.raises(BundleError, match=expected):
        freeze(sender, adapter, **metadata())
    assert [path.name for path in sender.bundles.iterdir()] == []


@pytest.mark.parametrize("overrides, expected", [
    ({"base_identity": {"name": "x"}}, "weights_sha256 is missing"),
    ({"base_identity": {"name": "x", "weights_sha256": "zz"}}, "not a hex SHA-256"),
    ({"dataset_digest": ""}, "dataset_digest is missing"),
    ({"operator": None}, "operator is missing"),
    ({"eval_summary": [1, 2]}, "eval_summary must be a dict"),
    ({"training_config": {"lr": float("nan")}}, "training_config"),
])
def test_freeze_rejects_bad_metadata(tmp_path, sender, overrides, expected):
    with pytest.raises(BundleError, match=expected):
        freeze(sender, make_adapter(tmp_path / "adapter"), **metadata(**overrides))


def test_load_version_by_prefix(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    assert load_version(sender, version.digest[:8]).digest == version.digest
    with pytest.raises(VersionNotFoundError, match="at least 6"):
        load_version(sender, "abc")
    with pytest.raises(VersionNotFoundError, match="no frozen version"):
        load_version(sender, "0" * 12 if not version.digest.startswith("0") else "f" * 12)


# -- sign and verify -------------------------------------------------------------------------


def test_sign_and_verify_names_signer(sender, signed):
    result = verify_bundle(signed.path, workspace=sender)

    assert result.digest == signed.digest
    assert result.signer.name == "site-a"
    assert result.signer.fingerprint == keys.site_key_info(sender).fingerprint
    row = list_versions(sender)[0]
    assert row["signer_name"] == "site-a"
    assert row["signer_fingerprint"] == result.signer.fingerprint
    assert stat.S_IMODE(os.stat(signed.path / "model.sig").st_mode) == 0o444


def test_model_signing_cli_accepts_bundle(sender, signed):
    result = model_signing_verify(signed.path, keys.public_key_path(sender))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout


def test_model_signing_cli_rejects_changed_file(sender, signed):
    make_writable(signed.path)
    with open(signed.path / "adapter" / "adapter_config.json", "a") as handle:
        handle.write(" ")

    result = model_signing_verify(signed.path, keys.public_key_path(sender))

    assert result.returncode != 0
    assert "adapter/adapter_config.json" in result.stderr


def test_sign_twice_rejected(sender, signed):
    with pytest.raises(BundleError, match="already signed"):
        sign_version(sender, signed.digest, PASSPHRASE)
    sign_version(sender, signed.digest, PASSPHRASE, replace=True)
    assert verify_bundle(signed.path, workspace=sender).signer.name == "site-a"


def test_sign_wrong_passphrase(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    with pytest.raises(keys.KeyringError, match="wrong passphrase"):
        sign_version(sender, version.digest, "wrong passphrase")
    assert not version.signed


def test_sign_rejects_changed_bundle(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())
    make_writable(version.path)
    (version.path / "extra.txt").write_text("x")

    with pytest.raises(IntegrityError, match="extra.txt"):
        sign_version(sender, version.digest, PASSPHRASE)


def test_verify_unsigned_bundle(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    with pytest.raises(IntegrityError, match="not signed"):
        verify_bundle(version.path, workspace=sender)


def test_verify_unknown_signer(tmp_path, signed):
    stranger = new_workspace(tmp_path / "stranger", "site-c")
    fingerprint = keys.site_key_info(Workspace(signed.path.parent.parent)).fingerprint

    with pytest.raises(IntegrityError, match=f"unknown key with fingerprint {fingerprint}"):
        verify_bundle(signed.path, workspace=stranger)


# -- export and import -----------------------------------------------------------------------


def workspace_snapshot(workspace: Workspace) -> tuple:
    """Every path under the workspace except the database and logs, plus the versions rows."""
    paths = sorted(str(path.relative_to(workspace.root)) for path in workspace.root.rglob("*")
                   if not path.name.startswith("reckon.db") and workspace.logs not in path.parents)
    connection = sqlite3.connect(workspace.db_path)
    try:
        exists = connection.execute("select count(*) from sqlite_master where name='versions'"
                                    ).fetchone()[0]
        rows = connection.execute("select id from versions").fetchall() if exists else []
    finally:
        connection.close()
    return paths, sorted(rows)


def test_round_trip_into_second_workspace(tmp_path, receiver, signed, archive):
    result = import_archive(receiver, archive)

    assert not result.already_present
    assert result.version.digest == signed.digest
    assert result.verification.signer.name == "site-a"
    assert result.version.path == receiver.bundles / signed.digest
    assert verify_bundle(result.version.path, workspace=receiver).digest == signed.digest
    assert stat.S_IMODE(os.stat(result.version.path).st_mode) == 0o555
    rows = list_versions(receiver)
    assert [(row["id"], row["source"], row["signer_name"]) for row in rows] == [
        (signed.digest, "imported", "site-a")]
    assert [path.name for path in receiver.bundles.iterdir()] == [signed.digest]
    cli_check = model_signing_verify(result.version.path, receiver.keyring / "site-a.pub.pem")
    assert cli_check.returncode == 0, cli_check.stderr


def test_round_trip_gzip(tmp_path, sender, receiver, signed):
    archive = export_version(sender, signed.digest, tmp_path / "bundle.tar.gz")
    with open(archive, "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"

    assert import_archive(receiver, archive).version.digest == signed.digest


def test_import_twice_keeps_one_copy(receiver, archive):
    import_archive(receiver, archive)
    again = import_archive(receiver, archive)

    assert again.already_present
    assert len([path for path in receiver.bundles.iterdir()]) == 1


def test_export_is_reproducible(tmp_path, sender, signed, archive):
    again = export_version(sender, signed.digest, tmp_path / "again.tar")

    assert again.read_bytes() == archive.read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        export_version(sender, signed.digest, archive)


def test_reimport_keeps_frozen_record(sender, archive):
    result = import_archive(sender, archive)

    assert result.already_present
    assert [row["source"] for row in list_versions(sender)] == ["frozen"]


def test_export_rejects_unsigned(tmp_path, sender):
    version = freeze(sender, make_adapter(tmp_path / "adapter"), **metadata())

    with pytest.raises(IntegrityError, match="not signed"):
        export_version(sender, version.digest, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def read_members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tar:
        return [(member, tar.extractfile(member).read() if member.isreg() else None)
                for member in tar.getmembers()]


def write_members(path: Path, members) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info = _copy_info(info)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _copy_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    copy = tarfile.TarInfo(info.name)
    for field in ("size", "mode", "mtime", "type", "linkname", "uid", "gid", "uname", "gname",
                  "devmajor", "devminor"):
        setattr(copy, field, getattr(info, field))
    return copy


def file_info(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o444
    info.linkname = linkname
    return info


def flip_byte(data: bytes, offset: int = -1) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


def tamper(members, digest: str, case: str, other_signature: bytes | None):
    """Return the member list changed as `case` describes."""
    def named(relative):
        return f"{digest}/{relative}"

    out = [(info, data) for info, data in members]
    index = {info.name: position for position, (info, _) in enumerate(out)}

    def replace(relative, function):
        position = index[named(relative)]
        info, data = out[position]
        out[position] = (info, function(data))

    if case == "changed_byte_weights":
        replace("adapter/adapter_model.safetensors", lambda data: flip_byte(data, 200))
    elif case == "changed_byte_signature":
        # Change a byte of the base64 signature value so the JSON stays valid.
        def change(data):
            bundle = json.loads(data)
            signature = bundle["dsseEnvelope"]["signatures"][0]["sig"]
            swapped = ("A" if signature[10] != "A" else "B")
            bundle["dsseEnvelope"]["signatures"][0]["sig"] = signature[:10] + swapped + signature[11:]
            return json.dumps(bundle).encode()
        replace("model.sig", change)
    elif case == "added_file":
        out.append((file_info(named("adapter/extra.bin")), b"extra"))
    elif case == "removed_file":
        out = [(info, data) for info, data in out if info.name != named("adapter/adapter_config.json")]
    elif case == "renamed_file":
        position = index[named("adapter/adapter_config.json")]
        info, data = out[position]
        renamed = _copy_info(info)
        renamed.name = named("adapter/adapter_config.jsn")
        out[position] = (renamed, data)
    elif case == "edited_manifest":
        replace("manifest.json", lambda data: data.replace(b'"alice"', b'"mallory"'))
    elif case == "edited_manifest_resummed":
        # An attacker who also rewrites SHA256SUMS and the folder name still lacks the key.
        manifest = None
        for info, data in out:
            if info.name == named("manifest.json"):
                manifest = data.replace(b'"alice"', b'"mallory"')
        sums = None
        for info, data in out:
            if info.name == named("SHA256SUMS"):
                sums = data.decode()
        old_hash = sha256_bytes(next(data for info, data in out if info.name == named("manifest.json")))
        sums = sums.replace(old_hash, sha256_bytes(manifest)).encode()
        new_digest = sha256_bytes(sums)
        rebuilt = []
        for info, data in out:
            copy = _copy_info(info)
            copy.name = info.name.replace(digest, new_digest, 1)
            if info.name == named("manifest.json"):
                data = manifest
            elif info.name == named("SHA256SUMS"):
                data = sums
            rebuilt.append((copy, data))
        out = rebuilt
    elif case == "unknown_signer":
        replace("model.sig", lambda data: other_signature)
    elif case == "traversal":
        out.append((file_info("../evil.txt"), b"x"))
    elif case == "traversal_inside":
        out.append((file_info(named("adapter/../../evil.txt")), b"x"))
    elif case == "absolute":
        out.append((file_info("/tmp/evil.txt"), b"x"))
    elif case == "symlink":
        out.append((file_info(named("link"), tarfile.SYMTYPE, "/etc/passwd"), None))
    elif case == "hardlink":
        out.append((file_info(named("hard"), tarfile.LNKTYPE, named("manifest.json")), None))
    elif case == "char_device":
        out.append((file_info(named("null"), tarfile.CHRTYPE), None))
    elif case == "fifo":
        out.append((file_info(named("pipe"), tarfile.FIFOTYPE), None))
    elif case == "duplicate":
        position = index[named("manifest.json")]
        out.append(out[position])
    elif case == "second_top_level":
        out.append((file_info("other/readme.txt"), b"x"))
    else:
        raise AssertionError(case)
    return out


TAMPER_CASES = {
    "changed_byte_weights": (IntegrityError, "adapter/adapter_model.safetensors"),
    "changed_byte_signature": (IntegrityError, "model.sig: signature verification"),
    "added_file": (IntegrityError, "added or renamed.*adapter/extra.bin"),
    "removed_file": (IntegrityError, "missing.*adapter/adapter_config.json"),
    "renamed_file": (IntegrityError, "adapter/adapter_config.jsn"),
    "edited_manifest": (IntegrityError, "manifest.json: SHA-256"),
    "edited_manifest_resummed": (IntegrityError, "signature verification"),
    "unknown_signer": (IntegrityError, "unknown key with fingerprint"),
    "traversal": (ArchiveError, "'../evil.txt'.*path traversal"),
    "traversal_inside": (ArchiveError, "evil.txt.*path traversal"),
    "absolute": (ArchiveError, "'/tmp/evil.txt': absolute"),
    "symlink": (ArchiveError, "link'.*links are not allowed"),
    "hardlink": (ArchiveError, "hard'.*links are not allowed"),
    "char_device": (ArchiveError, "null'.*device files"),
    "fifo": (ArchiveError, "pipe'.*device files and FIFOs"),
    "duplicate": (ArchiveError, "manifest.json'.*duplicate name"),
    "second_top_level": (ArchiveError, "one top-level"),
}


@pytest.fixture
def stranger_signature(tmp_path, signed):
    """model.sig for the same bundle, signed by a key the receiver does not trust."""
    stranger = new_workspace(tmp_path / "stranger", "site-x")
    copy = stranger.bundles / signed.digest
    shutil.copytree(signed.path, copy)
    make_writable(copy)
    (copy / "model.sig").unlink()
    make_read_only(copy)
    sign_version(stranger, signed.digest, PASSPHRASE)
    return (copy / "model.sig").read_bytes()


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
def test_import_rejects_tampering(tmp_path, receiver, signed, archive, stranger_signature, case):
    error_type, message = TAMPER_CASES[case]
    tampered = write_members(tmp_path / f"{case}.tar",
                             tamper(read_members(archive), signed.digest, case, stranger_signature))
    before = workspace_snapshot(receiver)

    with pytest.raises(error_type, match=message):
        import_archive(receiver, tampered)

    assert workspace_snapshot(receiver) == before
    assert not (tmp_path / "evil.txt").exists()
    assert not (receiver.bundles.parent / "evil.txt").exists()


def tar_cut_points(archive: Path) -> dict[str, int]:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        end = tar.offset
    return {"in_header": members[3].offset + 100,
            "in_last_member": members[-1].offset_data + members[-1].size // 2,
            "in_end_marker": end + 600}


@pytest.mark.parametrize("cut", ["in_header", "in_last_member", "in_end_marker"])
def test_import_rejects_truncated_tar(tmp_path, receiver, archive, cut):
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: tar_cut_points(archive)[cut]])
    before = workspace_snapshot(receiver)

    with pytest.raises(ArchiveError, match="truncated.tar.*truncated"):
        import_archive(receiver, truncated)

    assert workspace_snapshot(receiver) == before


@pytest.mark.parametrize("keep", ["half", "all_but_crc"])
def test_import_rejects_truncated_gzip(tmp_path, sender, receiver, signed, keep):
    archive = export_version(sender, signed.digest, tmp_path / "bundle.tar.gz")
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2] if keep == "half" else data[:-4])
    before = workspace_snapshot(receiver)

    with pytest.raises(ArchiveError, match="truncated.tar.gz.*(truncated|corrupt|cannot read)"):
        import_archive(receiver, truncated)

    assert workspace_snapshot(receiver) == before


def test_import_rejects_oversize_member(receiver, archive):
    before = workspace_snapshot(receiver)

    sizes = {info.name.split("/", 1)[-1]: info.size for info, _ in read_members(archive)}
    largest = max(sizes, key=sizes.get)
    limit = sorted(sizes.values())[-2]

    with pytest.raises(ArchiveError, match=f"{largest}': {sizes[largest]} bytes exceeds the "
                                           f"limit of {limit} bytes"):
        import_archive(receiver, archive, max_member_bytes=limit)

    assert workspace_snapshot(receiver) == before


def test_import_rejects_not_an_archive(tmp_path, receiver):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))

    with pytest.raises(ArchiveError, match="junk.tar"):
        import_archive(receiver, junk)


def test_import_without_sender_key(tmp_path, archive):
    lonely = new_workspace(tmp_path / "lonely", "site-z")
    before = workspace_snapshot(lonely)

    with pytest.raises(IntegrityError, match="unknown key.*reckon keys import-public"):
        import_archive(lonely, archive)

    assert workspace_snapshot(lonely) == before
