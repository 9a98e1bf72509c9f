"""Versioned dataset folders: <workspace>/artifacts/datasets/ds-<12 hex>/.

Contents:
    manifest.json              provenance, renderer, tokenizer, filters, counts, digest
    train.jsonl                {"messages": [... target], "tools": [...], "meta": {...}}
    validation.jsonl           the same shape; lines are in the order of the tokenized files
    tokenized/train.jsonl      {"input_ids": [...], "labels": [...]}, -100 = not trained
    tokenized/validation.jsonl

The id comes from the content digest: SHA-256 over the four data files and the parts of
the manifest that decide what the rows mean (renderer, prompt kind, tool style, tokenizer,
max_length, pack digest). The same content always gets the same id, and a folder that
exists is never rewritten. A folder is first written under a temporary name and renamed,
so a half-written dataset never carries a valid id.

NOTE: loading train.jsonl with Hugging Face `datasets` turns the nested tool schemas into
Arrow structs, which can add null fields and reorder keys. A trainer that re-renders should
read the lines with `json.loads` (see `read_examples`) or use the tokenized files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from appliance.errors import NotFoundError, ReckonError
from appliance.store import Store, now

DATA_FILES = ("train.jsonl", "validation.jsonl", "tokenized/train.jsonl",
              "tokenized/validation.jsonl")
# Manifest fields that take part in the digest; the rest (time, counts, source runs)
# describe how the content was made, not what it is.
DIGESTED_FIELDS = ("format_version", "pack", "renderer", "prompt_kind", "tool_style",
                   "tokenizer", "max_length")
FORMAT_VERSION = 1


def ensure_tables(store: Store) -> None:
    store.ensure_table("datasets", {
        "id": str, "digest": str, "path": str, "pack_id": str, "pack_digest": str,
        "renderer": str, "base": str, "max_length": int, "runs": str,
        "n_train": int, "n_validation": int, "manifest": str, "created_at": float,
    }, indexes=[["created_at"]])


def json_line(value) -> str:
    """Serialise one JSONL line in literal UTF-8 (no \\u escapes), keys in insertion order.

    Keys are not sorted: the order of a tool's parameter properties is what the compact
    tool listing shows, so sorting would make a re-rendered example differ from serving.
    Tool-call arguments are already sorted by `render.prepare_messages`.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


def _digest(folder: Path, manifest: dict) -> str:
    digest = hashlib.sha256()
    described = {key: manifest.get(key) for key in DIGESTED_FIELDS}
    digest.update(json.dumps(described, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    for name in DATA_FILES:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


class DatasetWriter:
    """Streams rows into a temporary folder, then seals it under its content id."""

    def __init__(self, artifacts: Path):
        self.root = Path(artifacts) / "datasets"
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".writing-", dir=self.root))
        (self.folder / "tokenized").mkdir()
        self.handles = {name: open(self.folder / name, "w", encoding="utf-8")
                        for name in DATA_FILES}
        self.counts = {"train": 0, "validation": 0}

    def add(self, split: str, example: dict, input_ids: list[int], labels: list[int]) -> None:
        if split not in self.counts:
            raise ValueError(f"split {split!r} is not train or validation")
        self.handles[f"{split}.jsonl"].write(json_line(example))
        self.handles[f"tokenized/{split}.jsonl"].write(
            json_line({"input_ids": input_ids, "labels": labels}))
        self.counts[split] += 1

    def abort(self) -> None:
        for handle in self.handles.values():
            handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def seal(self, manifest: dict) -> tuple[str, Path, dict]:
        """Close the files, name the folder by digest and write manifest.json."""
        for handle in self.handles.values():
            handle.close()
        manifest = dict(manifest, format_version=FORMAT_VERSION)
        digest = _digest(self.folder, manifest)
        dataset_id = "ds-" + digest.split(":")[1][:12]
        manifest.update(id=dataset_id, digest=digest,
                        split_sizes=dict(self.counts), files=list(DATA_FILES))
        target = self.root / dataset_id
        if target.exists():
            # Same content as an existing dataset: keep the sealed folder as it is.
            shutil.rmtree(self.folder, ignore_errors=True)
            existing = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
            if existing.get("digest") != digest:
                raise ReckonError(f"dataset folder {target} has digest {existing.get('digest')}, "
                                  f"expected {digest}; move the folder aside and curate again")
            return dataset_id, target, existing
        (self.folder / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
            encoding="utf-8")
        os.replace(self.folder, target)
        # Read-only files: a sealed dataset is immutable. Folders stay writable so that
        # the operator can still delete an unused dataset as a whole.
        for path in target.rglob("*"):
            if path.is_file():
                os.chmod(path, 0o444)
        return dataset_id, target, manifest


def record(store: Store, dataset_id: str, path: Path, manifest: dict) -> None:
    ensure_tables(store)
    store.upsert("datasets", {
        "id": dataset_id, "digest": manifest["digest"], "path": str(path),
        "pack_id": manifest["pack"]["id"], "pack_digest": manifest["pack"]["digest"],
        "renderer": manifest["renderer"], "base": manifest["tokenizer"].get("base_spec"),
        "max_length": manifest["max_length"], "runs": ",".join(manifest["source_runs"]),
        "n_train": manifest["split_sizes"]["train"],
        "n_validation": manifest["split_sizes"]["validation"],
        "manifest": manifest, "created_at": manifest.get("created_at") or now(),
    })


def verify_folder(path: Path) -> dict:
    """Recompute a dataset folder's digest and compare it with its manifest."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise NotFoundError(f"{manifest_path} not found; is {path} a dataset folder?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    digest = _digest(path, manifest)
    if digest != manifest.get("digest"):
        raise ReckonError(f"dataset {path.name}: content digest {digest} does not match the "
                          f"manifest's {manifest.get('digest')}; the folder was changed")
    return manifest


def read_examples(path: Path, split: str = "train") -> list[dict]:
    with open(Path(path) / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
