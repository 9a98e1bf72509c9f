"""Export a signed bundle as one tar archive, and import such an archive safely.

An archive contains one folder, `<digest>/`, with the bundle's files and model.sig. Export
writes plain tar, or gzip-compressed tar when the output name ends in .gz or .tgz.

Import never trusts the archive. It checks every member header (type, name, size,
duplicates), extracts into a staging folder under bundles/, verifies every digest and
the signature there, and only then renames the folder into bundles/<digest>/. A failure
at any step removes the staging folder, so the workspace is left as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tarfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from appliance.workspace import Workspace
from bundles.errors import ArchiveError, BundleError, IntegrityError
from bundles.freeze import FrozenVersion, is_recorded, load_version, record_import
from bundles.manifest import (DIGEST_PATTERN, SIGNATURE_NAME, check_relative_path,
                              make_read_only, remove_tree, scan_files, verify_file_set)
from bundles.sign import Verification, verify_bundle

log = logging.getLogger(__name__)

# Defaults sized for a LoRA adapter of a small model plus its GGUF LoRA, with headroom.
# NOTE: adapters of large models can exceed 1 GiB per file (estimate: rank 64 on all
# projections of a 70B model is about 1.6 GiB in fp32); raise max_member_bytes
# (`reckon bundle import --max-member-mb`) for those.
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
DEFAULT_MAX_TOTAL_BYTES = 4 << 30
DEFAULT_MAX_MEMBERS = 256
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImportResult:
    version: FrozenVersion
    verification: Verification
    already_present: bool


# -- export --------------------------------------------------------------------------------


def export_version(workspace: Workspace, digest: str, out_path: str | os.PathLike, *,
                   compress: bool | None = None) -> Path:
    """Write bundles/<digest>/ and its signature to a tar archive at out_path.

    The bundle is verified first; an unsigned bundle is rejected because the receiving
    site could not check it. compress=None picks gzip from the .gz/.tgz suffix.
    """
    version = load_version(workspace, digest)
    verify_bundle(version.path, workspace=workspace, expected_digest=version.digest)
    out_path = Path(out_path)
    if compress is None:
        compress = out_path.suffix in (".gz", ".tgz")
    if out_path.exists():
        raise BundleError(f"{out_path} already exists; choose another output path")

    # Members get fixed owner and mode, and the manifest's creation time as mtime, so
    # exporting the same version twice gives the same tar bytes (gzip adds its own stamp).
    mtime = _manifest_mtime(version.manifest)
    files = scan_files(version.path, exclude=frozenset())
    temporary = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tarfile.open(temporary, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
            folders = sorted({parent.as_posix() for name in files
                              for parent in Path(name).parents} - {"."})
            tar.addfile(_dir_info(version.digest, mtime))
            for folder in folders:
                tar.addfile(_dir_info(f"{version.digest}/{folder}", mtime))
            for name in files:
                source = version.path / name
                info = tarfile.TarInfo(f"{version.digest}/{name}")
                info.size = source.stat().st_size
                info.mode = 0o444
                info.mtime = mtime
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(source, "rb") as handle:
                    tar.addfile(info, handle)
        os.replace(temporary, out_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    log.info("exported version %s to %s", version.digest, out_path)
    return out_path


def _dir_info(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o555
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _manifest_mtime(manifest: dict) -> int:
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(manifest["created_at"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return 0


# -- import --------------------------------------------------------------------------------


def import_archive(workspace: Workspace, archive_path: str | os.PathLike, *,
                   max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                   max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                   max_members: int = DEFAULT_MAX_MEMBERS) -> ImportResult:
    """Verify an exported archive and install its bundle into bundles/<digest>/.

    Raises ArchiveError for an unsafe or malformed archive and IntegrityError for a bundle
    whose digests, file set or signature (checked against the site key and the keyring)
    do not verify. Nothing is placed in bundles/ unless every check passes.
    """
    archive_path = Path(archive_path)
    if not archive_path.is_file():
        raise ArchiveError(f"archive {archive_path} does not exist")
    workspace.bundles.mkdir(parents=True, exist_ok=True)
    staging = workspace.bundles / f".import-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        digest = _extract_checked(archive_path, staging, max_member_bytes=max_member_bytes,
                                  max_total_bytes=max_total_bytes, max_members=max_members)
        extracted = staging / digest
        verification = verify_bundle(extracted, workspace=workspace, expected_digest=digest)

        final = workspace.bundles / digest
        if final.exists():
            # The same digest means the same bytes, so the installed copy is kept. It is
            # checked too, because a damaged local copy must be reported, not trusted.
            verify_file_set(final, digest)
            version = load_version(workspace, digest)
            verification = dataclasses.replace(verification, path=version.path)
            log.info("version %s from %s is already installed", digest, archive_path)
            if not is_recorded(workspace, digest):
                record_import(workspace, version, verification.signer, time.time())
            return ImportResult(version, verification, already_present=True)

        make_read_only(extracted)
        os.rename(extracted, final)
    finally:
        remove_tree(staging)

    version = load_version(workspace, digest)
    verification = dataclasses.replace(verification, path=version.path)
    record_import(workspace, version, verification.signer, time.time())
    log.info("imported version %s from %s, signed by %s fingerprint %s", digest, archive_path,
             verification.signer.name, verification.signer.fingerprint)
    return ImportResult(version, verification, already_present=False)


def _extract_checked(archive_path: Path, staging: Path, *, max_member_bytes: int,
                     max_total_bytes: int, max_members: int) -> str:
    """Check every member header, then extract regular files and folders; return the digest."""
    try:
        with tarfile.open(archive_path, "r:*") as tar:
            members = _read_members(tar, archive_path, max_members)
            digest = _check_members(members, archive_path, max_member_bytes, max_total_bytes)
            for member in members:
                _extract_member(tar, member, staging, archive_path)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ArchiveError(f"{archive_path}: the archive is truncated or corrupt ({error}); "
                           "copy it again from the sending site") from None
    except OSError as error:
        # gzip raises BadGzipFile (an OSError) for a damaged compressed stream.
        raise ArchiveError(f"{archive_path}: cannot read the archive ({error})") from None
    return digest


def _read_members(tar: tarfile.TarFile, archive_path: Path, max_members: int) -> list[tarfile.TarInfo]:
    members = []
    while True:
        member = tar.next()
        if member is None:
            break
        members.append(member)
        if len(members) > max_members:
            raise ArchiveError(f"{archive_path}: more than {max_members} members; a bundle has "
                               "a handful of files")
    if not members:
        raise ArchiveError(f"{archive_path}: the archive is empty")
    # tarfile stops quietly when the data simply ends after a member, so a cut archive
    # can look complete. POSIX tar ends with two zero blocks; require them.
    tar.fileobj.seek(tar.offset)
    trailer = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(trailer) != 2 * tarfile.BLOCKSIZE or trailer.count(0) != len(trailer):
        raise ArchiveError(f"{archive_path}: the archive is truncated (no end-of-archive "
                           f"marker after member {members[-1].name!r}); copy it again")
    # Reading to the end makes gzip check its CRC and length trailer, and finds data
    # appended after the marker, which tar tools would silently ignore.
    while True:
        block = tar.fileobj.read(_CHUNK)
        if not block:
            break
        if block.count(0) != len(block):
            raise ArchiveError(f"{archive_path}: unexpected data after the end-of-archive "
                               "marker; the archive was changed or concatenated")
    return members


def _check_members(members: list[tarfile.TarInfo], archive_path: Path, max_member_bytes: int,
                   max_total_bytes: int) -> str:
    seen: set[str] = set()
    top_levels: set[str] = set()
    total = 0
    for member in members:
        name = member.name
        where = f"{archive_path}: member {name!r}"
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise ArchiveError(f"{where}: absolute member names are not allowed")
        normalized = name[2:] if name.startswith("./") else name
        normalized = normalized.rstrip("/") if member.isdir() else normalized
        try:
            check_relative_path(normalized, where)
        except IntegrityError:
            raise ArchiveError(f"{where}: unsafe path (empty, '.', '..' or backslash "
                               "component); possible path traversal") from None
        if member.issym() or member.islnk():
            raise ArchiveError(f"{where}: links are not allowed (points to {member.linkname!r})")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise ArchiveError(f"{where}: device files and FIFOs are not allowed")
        if not (member.isreg() or member.isdir()):
            raise ArchiveError(f"{where}: member type {member.type!r} is not a regular file "
                               "or folder")
        if normalized in seen:
            raise ArchiveError(f"{where}: duplicate name; the archive lists it more than once")
        seen.add(normalized)
        if member.isreg():
            if member.size > max_member_bytes:
                raise ArchiveError(f"{where}: {member.size} bytes exceeds the limit of "
                                   f"{max_member_bytes} bytes per member")
            total += member.size
            if total > max_total_bytes:
                raise ArchiveError(f"{archive_path}: members exceed the total limit of "
                                   f"{max_total_bytes} bytes")
        top_levels.add(normalized.split("/", 1)[0])
        if member.isreg() and "/" not in normalized:
            raise ArchiveError(f"{where}: files must be inside the <digest>/ folder")

    if len(top_levels) != 1:
        raise ArchiveError(f"{archive_path}: expected one top-level <digest>/ folder, found "
                           f"{', '.join(sorted(top_levels))}")
    digest = top_levels.pop()
    if not DIGEST_PATTERN.match(digest):
        raise ArchiveError(f"{archive_path}: top-level folder {digest!r} is not a version "
                           "digest (64 lowercase hex digits)")
    if f"{digest}/{SIGNATURE_NAME}" not in seen:
        raise ArchiveError(f"{archive_path}: {digest}/{SIGNATURE_NAME} is missing; the "
                           "archive holds an unsigned bundle")
    return digest


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path,
                    archive_path: Path) -> None:
    name = member.name[2:] if member.name.startswith("./") else member.name
    target = staging / name.rstrip("/")
    # Names were checked above; this is a second guard against escaping the staging folder.
    if staging.resolve() not in target.resolve().parents:
        raise ArchiveError(f"{archive_path}: member {member.name!r} resolves outside the "
                           "staging folder")
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise ArchiveError(f"{archive_path}: member {member.name!r} has no data")
    written = 0
    with source, open(target, "xb") as handle:
        while True:
            block = source.read(min(_CHUNK, member.size - written) or 1)
            if not block:
                break
            written += len(block)
            if written > member.size:
                raise ArchiveError(f"{archive_path}: member {member.name!r} has more data "
                                   "than its header states")
            handle.write(block)
    if written != member.size:
        raise ArchiveError(f"{archive_path}: member {member.name!r} is truncated "
                           f"({written} of {member.size} bytes)")
