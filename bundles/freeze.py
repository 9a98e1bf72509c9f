"""Freeze a chosen LoRA candidate into an immutable, content-addressed bundle.

Typical use by the training or eval code, once a candidate wins:

    from bundles.freeze import freeze
    version = freeze(workspace, adapter_dir,
                     base_identity={"name": "gemma-3-270m", "path": gguf_path,
                                    "weights_sha256": "..."},
                     dataset_digest=..., evalset_digest=..., eval_summary={...},
                     pack_id="...", pack_digest="...", prompt_format="reckon-specialist-v1",
                     training_config={...}, operator="alice")
    # version.digest names <workspace>/bundles/<digest>/; sign it with bundles.sign.

Freezing the same adapter files with the same metadata again returns the existing version
(created_at and operator aside), so a retried call does not make duplicates.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.workspace import Workspace
from bundles.errors import BundleError, VersionNotFoundError
from bundles.manifest import (DIGEST_PATTERN, MANIFEST_FORMAT, MANIFEST_NAME, SIGNATURE_NAME,
                              SUMS_NAME, compute_digest, dump_manifest, make_read_only,
                              read_manifest, remove_tree, render_sums, sha256_bytes,
                              sha256_file)

log = logging.getLogger(__name__)

VERSIONS_TABLE = "versions"
ADAPTER_FOLDER = "adapter"
REQUIRED_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GGUF_LORA_NAME = "adapter.gguf"
MODELFILE_NAME = "Modelfile"

# Distribution names whose versions the manifest records; values are manifest keys.
LIBRARIES = {
    "torch": "torch", "transformers": "transformers", "peft": "peft",
    "llama_cpp_python": "llama_cpp", "gguf": "gguf", "model-signing": "model_signing",
    "reckoning": "appliance",
}
# Manifest fields that may differ between two freezes of the same candidate.
_EVENT_FIELDS = ("created_at", "operator")


@dataclass(frozen=True)
class FrozenVersion:
    """A frozen bundle in the workspace."""

    digest: str
    path: Path
    manifest: dict

    @property
    def signed(self) -> bool:
        return (self.path / SIGNATURE_NAME).exists()

    @property
    def short(self) -> str:
        return self.digest[:12]


def ensure_versions_table(store) -> None:
    store.ensure_table(VERSIONS_TABLE, {
        "id": str,                 # the version digest (SHA-256 of SHA256SUMS)
        "adapter_digest": str,     # digest over the adapter files alone
        "created_at": str, "operator": str,
        "base_model": str, "base_weights_sha256": str,
        "dataset_digest": str, "evalset_digest": str,
        "pack_id": str, "pack_digest": str, "prompt_format": str,
        "source": str,             # frozen | imported
        "signer_name": str, "signer_fingerprint": str, "signed_at": float,
        "imported_at": float,
        "manifest": str,           # JSON: manifest.json as frozen
    }, indexes=[["adapter_digest"], ["created_at"]])


def freeze(workspace: Workspace, adapter_dir: str | os.PathLike, *, base_identity: dict,
           dataset_digest: str, evalset_digest: str, eval_summary: dict, pack_id: str,
           pack_digest: str, prompt_format: str, training_config: dict,
           operator: str) -> FrozenVersion:
    """Copy a peft adapter folder and its provenance into bundles/<digest>/, read-only.

    adapter_dir must contain adapter_config.json and adapter_model.safetensors; a single
    *.gguf GGUF LoRA and a Modelfile are frozen too when present, and other files (peft's
    README.md, optimizer state) are left out. base_identity is a dict with at least "name"
    and "weights_sha256" (hex SHA-256 of the base weights file). The other digests and
    ids are recorded as given. Raises BundleError on invalid input.
    """
    adapter_dir = Path(adapter_dir)
    sources = _select_adapter_files(adapter_dir)
    _check_metadata(base_identity, dataset_digest, evalset_digest, eval_summary, pack_id,
                    pack_digest, prompt_format, training_config, operator)

    files = {relative: {"sha256": sha256_file(source), "size": source.stat().st_size}
             for relative, source in sources.items()}
    adapter_digest = sha256_bytes(render_sums(
        {path: entry["sha256"] for path, entry in files.items()}).encode("utf-8"))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "files": files,
        "adapter_digest": adapter_digest,
        "base_model": dict(base_identity),
        "dataset_digest": dataset_digest,
        "evalset_digest": evalset_digest,
        "eval_summary": eval_summary,
        "pack": {"id": pack_id, "digest": pack_digest},
        "prompt_format": prompt_format,
        "training_config": training_config,
        "libraries": library_versions(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "operator": operator,
    }
    # Round-trip through JSON now so a value that json cannot encode fails here, naming
    # the field, and so the comparison below sees what will be on disk.
    manifest = _json_round_trip(manifest)

    store = workspace.store()
    try:
        ensure_versions_table(store)
        existing = _find_same_freeze(workspace, store, manifest)
        if existing is not None:
            log.info("adapter %s is already frozen as %s", adapter_dir, existing.digest)
            return existing
        version = _build_bundle(workspace, sources, manifest)
        _record(store, version, source="frozen")
    finally:
        store.close()
    log.info("froze %s as version %s (operator %s)", adapter_dir, version.digest, operator)
    return version


def library_versions() -> dict[str, str | None]:
    """Return installed versions of the libraries that shape training and serving."""
    versions: dict[str, str | None] = {}
    for distribution, key in LIBRARIES.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    if versions["appliance"] is None:
        from appliance import __version__

        versions["appliance"] = __version__
    return versions


# -- lookup --------------------------------------------------------------------------------


def load_version(workspace: Workspace, digest_or_prefix: str) -> FrozenVersion:
    """Find a bundle by full digest or a unique prefix of at least 6 hex digits."""
    prefix = (digest_or_prefix or "").strip().lower()
    if len(prefix) < 6 or not all(char in "0123456789abcdef" for char in prefix):
        raise VersionNotFoundError(f"{digest_or_prefix!r} is not a version digest or a prefix "
                                   "of at least 6 hex digits; list versions with "
                                   "`reckon bundle list`")
    matches = [path for path in _bundle_dirs(workspace) if path.name.startswith(prefix)]
    if not matches:
        raise VersionNotFoundError(f"no frozen version matches {digest_or_prefix!r} in "
                                   f"{workspace.bundles}")
    if len(matches) > 1:
        raise VersionNotFoundError(f"{digest_or_prefix!r} matches {len(matches)} versions; "
                                   "give more digits")
    path = matches[0]
    return FrozenVersion(path.name, path, read_manifest(path))


def list_versions(workspace: Workspace) -> list[dict]:
    """Return rows of the versions table, newest first, with a `present` flag per folder."""
    store = workspace.store()
    try:
        ensure_versions_table(store)
        rows = list(store.rows(VERSIONS_TABLE, order_by="created_at desc"))
    finally:
        store.close()
    for row in rows:
        row["present"] = (workspace.bundles / row["id"]).is_dir()
    return rows


def _bundle_dirs(workspace: Workspace) -> list[Path]:
    if not workspace.bundles.exists():
        return []
    return sorted(path for path in workspace.bundles.iterdir()
                  if path.is_dir() and DIGEST_PATTERN.match(path.name))


# -- building ------------------------------------------------------------------------------


def _select_adapter_files(adapter_dir: Path) -> dict[str, Path]:
    """Map bundle-relative paths to source files; raises BundleError on a bad folder."""
    if not adapter_dir.is_dir():
        raise BundleError(f"adapter folder {adapter_dir} does not exist")
    sources: dict[str, Path] = {}
    for name in REQUIRED_ADAPTER_FILES:
        path = adapter_dir / name
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{adapter_dir}: {name} is missing; expected a peft LoRA folder "
                              "written by save_pretrained")
        sources[f"{ADAPTER_FOLDER}/{name}"] = path
    _check_adapter_config(adapter_dir / "adapter_config.json")
    _check_safetensors(adapter_dir / "adapter_model.safetensors")

    gguf_files = sorted(path for path in adapter_dir.glob("*.gguf") if path.is_file())
    if len(gguf_files) > 1:
        raise BundleError(f"{adapter_dir}: more than one .gguf file "
                          f"({', '.join(path.name for path in gguf_files)}); keep only the "
                          "GGUF LoRA of this adapter")
    if gguf_files:
        with open(gguf_files[0], "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise BundleError(f"{gguf_files[0]} is not a GGUF file (bad magic)")
        sources[f"{ADAPTER_FOLDER}/{GGUF_LORA_NAME}"] = gguf_files[0]
    if (adapter_dir / MODELFILE_NAME).is_file():
        sources[MODELFILE_NAME] = adapter_dir / MODELFILE_NAME

    chosen = {path.name for path in sources.values()}
    skipped = sorted(path.name for path in adapter_dir.iterdir() if path.name not in chosen)
    if skipped:
        log.info("not frozen from %s: %s", adapter_dir, ", ".join(skipped))
    return sources


def _check_adapter_config(path: Path) -> None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise BundleError(f"{path}: peft_type is {config.get('peft_type') if isinstance(config, dict) else None!r}, "
                          "expected 'LORA'")


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = list(handle.keys())
    except Exception as error:  # safetensors raises its own SafetensorError type
        raise BundleError(f"{path}: not a readable safetensors file ({error})") from None
    if not names:
        raise BundleError(f"{path}: contains no tensors")


def _check_metadata(base_identity, dataset_digest, evalset_digest, eval_summary, pack_id,
                    pack_digest, prompt_format, training_config, operator) -> None:
    if not isinstance(base_identity, dict):
        raise BundleError("base_identity must be a dict with 'name' and 'weights_sha256'")
    for field in ("name", "weights_sha256"):
        if not isinstance(base_identity.get(field), str) or not base_identity[field]:
            raise BundleError(f"base_identity.{field} is missing or empty")
    weights = base_identity["weights_sha256"].removeprefix("sha256:")
    if not DIGEST_PATTERN.match(weights):
        raise BundleError(f"base_identity.weights_sha256 {base_identity['weights_sha256']!r} "
                          "is not a hex SHA-256")
    for name, value in (("dataset_digest", dataset_digest), ("evalset_digest", evalset_digest),
                        ("pack_id", pack_id), ("pack_digest", pack_digest),
                        ("prompt_format", prompt_format), ("operator", operator)):
        if not isinstance(value, str) or not value.strip():
            raise BundleError(f"{name} is missing or empty")
    for name, value in (("eval_summary", eval_summary), ("training_config", training_config)):
        if not isinstance(value, dict):
            raise BundleError(f"{name} must be a dict, got {type(value).__name__}")


def _json_round_trip(manifest: dict) -> dict:
    for field, value in manifest.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise BundleError(f"manifest field {field!r} is not JSON-serialisable: {error}") from None
    return json.loads(dump_manifest(manifest))


def _find_same_freeze(workspace: Workspace, store, manifest: dict) -> FrozenVersion | None:
    def comparable(value: dict) -> dict:
        return {key: item for key, item in value.items() if key not in _EVENT_FIELDS}

    target = comparable(manifest)
    for row in store.rows(VERSIONS_TABLE, "adapter_digest = ?", [manifest["adapter_digest"]]):
        path = workspace.bundles / row["id"]
        if not path.is_dir():
            continue
        existing = read_manifest(path)
        if comparable(existing) == target:
            return FrozenVersion(row["id"], path, existing)
    return None


def _build_bundle(workspace: Workspace, sources: dict[str, Path], manifest: dict) -> FrozenVersion:
    """Write the bundle into a staging folder, then rename it into place atomically."""
    staging = workspace.bundles / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        for relative, source in sources.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            # The source could change between hashing and copying, e.g. a training job
            # still writing; the copy is what gets frozen, so it must match the manifest.
            if sha256_file(target) != manifest["files"][relative]["sha256"]:
                raise BundleError(f"{source} changed while it was being frozen; retry when "
                                  "nothing writes to the adapter folder")
        (staging / MANIFEST_NAME).write_bytes(dump_manifest(manifest))
        digest, sums = compute_digest(staging)
        (staging / SUMS_NAME).write_text(sums, encoding="utf-8")

        final = workspace.bundles / digest
        if final.exists():
            raise BundleError(f"version {digest} already exists at {final}")
        make_read_only(staging)
        os.rename(staging, final)
    except BaseException:
        remove_tree(staging)
        raise
    return FrozenVersion(digest, final, manifest)


def _record(store, version: FrozenVersion, *, source: str, signer=None,
            imported_at: float | None = None) -> None:
    manifest = version.manifest
    row = {
        "id": version.digest,
        "adapter_digest": manifest["adapter_digest"],
        "created_at": manifest["created_at"],
        "operator": manifest["operator"],
        "base_model": manifest["base_model"].get("name"),
        "base_weights_sha256": manifest["base_model"].get("weights_sha256"),
        "dataset_digest": manifest["dataset_digest"],
        "evalset_digest": manifest["evalset_digest"],
        "pack_id": manifest["pack"].get("id"),
        "pack_digest": manifest["pack"].get("digest"),
        "prompt_format": manifest["prompt_format"],
        "source": source,
        "imported_at": imported_at,
        "manifest": manifest,
    }
    if signer is not None:
        row.update(signer_name=signer.name, signer_fingerprint=signer.fingerprint)
    store.upsert(VERSIONS_TABLE, row)


def record_signature(workspace: Workspace, digest: str, signer, signed_at: float) -> None:
    store = workspace.store()
    try:
        ensure_versions_table(store)
        if store.get(VERSIONS_TABLE, digest) is None:
            version = load_version(workspace, digest)
            _record(store, version, source="frozen")
        store.update(VERSIONS_TABLE, digest, {"signer_name": signer.name,
                                              "signer_fingerprint": signer.fingerprint,
                                              "signed_at": signed_at})
    finally:
        store.close()


def is_recorded(workspace: Workspace, digest: str) -> bool:
    store = workspace.store()
    try:
        ensure_versions_table(store)
        return store.get(VERSIONS_TABLE, digest) is not None
    finally:
        store.close()


def record_import(workspace: Workspace, version: FrozenVersion, signer, imported_at: float) -> None:
    store = workspace.store()
    try:
        ensure_versions_table(store)
        _record(store, version, source="imported", signer=signer, imported_at=imported_at)
    finally:
        store.close()
