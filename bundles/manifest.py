"""Canonical file sets, SHA256SUMS and the bundle manifest.

The version digest of a bundle is the SHA-256 of its SHA256SUMS file. SHA256SUMS has one
line per file, `<hex sha256>  <relative POSIX path>\\n`, sorted by the UTF-8 bytes of the
path, and lists every regular file of the bundle except SHA256SUMS itself and model.sig.
This is the format `sha256sum` writes and `sha256sum -c` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from bundles.errors import IntegrityError

SUMS_NAME = "SHA256SUMS"
SIGNATURE_NAME = "model.sig"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "reckon-bundle/1"
# Files at the bundle root that are not part of the summed file set.
UNSUMMED = frozenset({SUMS_NAME, SIGNATURE_NAME})

DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")

REQUIRED_MANIFEST_FIELDS = (
    "format", "files", "adapter_digest", "base_model", "dataset_digest", "evalset_digest",
    "eval_summary", "pack", "prompt_format", "training_config", "libraries", "created_at",
    "operator",
)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan_files(root: Path, exclude: frozenset[str] = UNSUMMED) -> list[str]:
    """Return the relative POSIX paths of the regular files under root, sorted.

    Raises IntegrityError on symlinks, device files and other non-regular entries, because
    a bundle must contain only plain files and folders. `exclude` names root-level files.
    """
    found: list[str] = []
    for directory, folders, files in os.walk(root):
        for entry in sorted(folders + files):
            full = Path(directory) / entry
            mode = os.lstat(full).st_mode
            relative = full.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise IntegrityError(f"{root}: {relative} is a symbolic link; bundles contain "
                                     "only regular files")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise IntegrityError(f"{root}: {relative} is not a regular file")
            if relative in exclude:
                continue
            found.append(relative)
    return sorted(found, key=lambda path: path.encode("utf-8"))


def hash_files(root: Path, paths: list[str]) -> dict[str, str]:
    return {path: sha256_file(root / path) for path in paths}


def render_sums(hashes: dict[str, str]) -> str:
    """Render `sha256sum` lines, sorted by path bytes."""
    lines = []
    for path in sorted(hashes, key=lambda item: item.encode("utf-8")):
        if "\n" in path or "\\" in path:
            raise IntegrityError(f"file name {path!r} contains a newline or backslash, which "
                                 "SHA256SUMS cannot represent")
        lines.append(f"{hashes[path]}  {path}\n")
    return "".join(lines)


def parse_sums(text: str, source: str = SUMS_NAME) -> dict[str, str]:
    """Parse SHA256SUMS strictly: canonical lines, sorted, no duplicates or unsafe paths."""
    entries: dict[str, str] = {}
    previous = None
    if text and not text.endswith("\n"):
        raise IntegrityError(f"{source}: the last line has no newline; the file is truncated "
                             "or edited")
    for number, line in enumerate(text.splitlines(), start=1):
        match = _SUMS_LINE.match(line)
        if not match:
            raise IntegrityError(f"{source}: line {number} is not '<sha256>  <path>'")
        digest, path = match.groups()
        check_relative_path(path, f"{source}: line {number}")
        if path in entries:
            raise IntegrityError(f"{source}: line {number}: {path} is listed twice")
        key = path.encode("utf-8")
        if previous is not None and key < previous:
            raise IntegrityError(f"{source}: line {number}: {path} is out of order")
        previous = key
        entries[path] = digest
    if not entries:
        raise IntegrityError(f"{source} is empty")
    return entries


def check_relative_path(path: str, where: str) -> None:
    """Reject absolute paths, '..', empty or '.' components and backslashes."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise IntegrityError(f"{where}: unsafe path {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise IntegrityError(f"{where}: unsafe path {path!r}")


def compute_digest(root: Path) -> tuple[str, str]:
    """Return (digest, SHA256SUMS text) for the files under root as they are on disk."""
    sums = render_sums(hash_files(root, scan_files(root)))
    return sha256_bytes(sums.encode("utf-8")), sums


def verify_file_set(root: Path, expected_digest: str | None = None) -> tuple[str, dict]:
    """Check a bundle folder against its SHA256SUMS and manifest.json.

    Checks, in order: SHA256SUMS parses; its SHA-256 equals `expected_digest` (or the
    folder name when that is a digest); the files on disk are exactly those listed (no
    added, removed or renamed file); each file's SHA-256 matches; manifest.json parses,
    has the required fields and lists exactly the payload files with the same digests.
    Returns (digest, manifest). Raises IntegrityError naming the first file that fails.
    """
    sums_path = root / SUMS_NAME
    if not sums_path.is_file():
        raise IntegrityError(f"{root}: {SUMS_NAME} is missing; this is not a frozen bundle")
    sums_bytes = sums_path.read_bytes()
    try:
        sums_text = sums_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"{sums_path}: not UTF-8 text") from None
    listed = parse_sums(sums_text, str(sums_path))
    digest = sha256_bytes(sums_bytes)
    if expected_digest is None and DIGEST_PATTERN.match(root.name):
        expected_digest = root.name
    if expected_digest is not None and digest != expected_digest:
        raise IntegrityError(f"{sums_path}: SHA-256 is {digest}, expected {expected_digest}; "
                             f"{SUMS_NAME} was changed")

    present = scan_files(root)
    added = sorted(set(present) - set(listed))
    removed = sorted(set(listed) - set(present))
    if added:
        raise IntegrityError(f"{root}: file not in {SUMS_NAME} (added or renamed): "
                             f"{', '.join(added)}")
    if removed:
        raise IntegrityError(f"{root}: file listed in {SUMS_NAME} is missing (removed or "
                             f"renamed): {', '.join(removed)}")
    for path in listed:
        actual = sha256_file(root / path)
        if actual != listed[path]:
            raise IntegrityError(f"{root / path}: SHA-256 {actual} does not match "
                                 f"{SUMS_NAME} ({listed[path]}); the file was changed")

    manifest = read_manifest(root)
    payload = {path: entry.get("sha256") for path, entry in manifest["files"].items()}
    expected_payload = {path: value for path, value in listed.items() if path != MANIFEST_NAME}
    if payload != expected_payload:
        raise IntegrityError(f"{root / MANIFEST_NAME}: the 'files' list does not match "
                             f"{SUMS_NAME}")
    return digest, manifest


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(f"{path} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntegrityError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path}: expected a JSON object")
    missing = [field for field in REQUIRED_MANIFEST_FIELDS if field not in manifest]
    if missing:
        raise IntegrityError(f"{path}: missing field(s) {', '.join(missing)}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise IntegrityError(f"{path}: format {manifest['format']!r} is not {MANIFEST_FORMAT!r}")
    if not isinstance(manifest["files"], dict):
        raise IntegrityError(f"{path}: 'files' must be an object of path -> {{sha256, size}}")
    for name, entry in manifest["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise IntegrityError(f"{path}: files.{name} has no 'sha256' string")
    return manifest


def dump_manifest(manifest: dict) -> bytes:
    """Serialise the manifest: sorted keys, two-space indent, UTF-8, final newline."""
    return (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()


# -- read-only trees -----------------------------------------------------------------------


def make_read_only(root: Path) -> None:
    """Set files to 0444 and folders to 0555, deepest first."""
    for directory, folders, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(directory) / name, 0o444)
        for name in folders:
            os.chmod(Path(directory) / name, 0o555)
    os.chmod(root, 0o555)


def make_writable(root: Path) -> None:
    """Undo make_read_only (files 0644, folders 0755) so a tree can be changed or removed."""
    if not root.exists():
        return
    os.chmod(root, 0o755)
    for directory, folders, files in os.walk(root):
        for name in folders:
            os.chmod(Path(directory) / name, 0o755)
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                os.chmod(path, 0o644)


def remove_tree(root: Path) -> None:
    import shutil

    if root.exists() or root.is_symlink():
        make_writable(root)
        shutil.rmtree(root)
