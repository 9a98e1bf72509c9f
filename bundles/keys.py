"""The site's signing key and the keyring of other sites' public keys.

Layout under <workspace>/keys/ (the folder is mode 0700):

    site_key.pem        ECDSA P-256 private key, PEM PKCS#8, encrypted with the passphrase
                        (BestAvailableEncryption), mode 0600
    site_key.pub.pem    its public key, PEM SubjectPublicKeyInfo
    site.json           {"name", "fingerprint", "created_at"}
    archive/<stamp>/    keys replaced by `init --force`
    keyring/<name>.pub.pem   public keys of other sites, trusted for import

A fingerprint is the hex SHA-256 of the PEM SubjectPublicKeyInfo bytes. model-signing 1.1.1
writes the same value into a signature's verificationMaterial.publicKey.hint, so the signer
of a bundle can be looked up by fingerprint before its signature is checked.

The passphrase is never logged or stored. Callers pass it in; the CLI reads it from
RECKON_KEY_PASSPHRASE or a hidden prompt.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.workspace import Workspace
from bundles.errors import KeyringError

log = logging.getLogger(__name__)

PRIVATE_KEY_NAME = "site_key.pem"
PUBLIC_KEY_NAME = "site_key.pub.pem"
SITE_INFO_NAME = "site.json"
KEYRING_SUFFIX = ".pub.pem"
PASSPHRASE_ENV = "RECKON_KEY_PASSPHRASE"
MIN_PASSPHRASE_LENGTH = 8

# Key names become file names in the keyring, so they are restricted to a safe alphabet.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PublicKeyInfo:
    """A trusted public key: the site's own key or a keyring entry."""

    name: str
    fingerprint: str
    path: Path
    own: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "path": str(self.path),
                "own": self.own}


def fingerprint_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """Return the hex SHA-256 of the key's PEM SubjectPublicKeyInfo encoding."""
    pem = public_key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def validate_key_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise KeyringError(
            f"invalid key name {name!r}: use 1-64 characters from letters, digits, '.', '_' "
            "and '-', starting with a letter or digit")
    return name


def private_key_path(workspace: Workspace) -> Path:
    return workspace.keys / PRIVATE_KEY_NAME


def public_key_path(workspace: Workspace) -> Path:
    return workspace.keys / PUBLIC_KEY_NAME


def has_site_key(workspace: Workspace) -> bool:
    return private_key_path(workspace).exists() or public_key_path(workspace).exists()


# -- site key ------------------------------------------------------------------------------


def init_key(workspace: Workspace, passphrase: str, *, name: str | None = None,
             force: bool = False) -> PublicKeyInfo:
    """Generate the site's ECDSA P-256 key pair, encrypted at rest with `passphrase`.

    Raises KeyringError when a key exists, unless `force`, which first moves the old key
    files to keys/archive/<UTC stamp>/. The archived key is no longer trusted: bundles it
    signed verify again only after its public key is imported into the keyring.
    """
    _check_passphrase_strength(passphrase)
    site_name = validate_key_name(name or _default_site_name())
    check_can_init(workspace, force=force)
    if has_site_key(workspace):
        archived = _archive_site_key(workspace)
        log.warning("archived the previous site key to %s", archived)

    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")))
    public_key = private_key.public_key()
    public_pem = public_key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = fingerprint_of(public_key)

    # O_EXCL with mode 0600 means the private key is never readable by others, not even
    # between creation and a later chmod.
    _write_new_file(private_key_path(workspace), private_pem, 0o600)
    _write_new_file(public_key_path(workspace), public_pem, 0o644)
    site_info = {"name": site_name, "fingerprint": fingerprint,
                 "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    _write_new_file(workspace.keys / SITE_INFO_NAME,
                    (json.dumps(site_info, indent=2, sort_keys=True) + "\n").encode(), 0o644)
    log.info("created site key %s fingerprint %s", site_name, fingerprint)
    return PublicKeyInfo(site_name, fingerprint, public_key_path(workspace), own=True)


def check_can_init(workspace: Workspace, *, force: bool = False) -> None:
    """Raise KeyringError when a site key exists and `force` is not set."""
    if has_site_key(workspace) and not force:
        info = site_key_info(workspace)
        raise KeyringError(
            f"a site key already exists ({info.name}, fingerprint {info.fingerprint}) "
            f"in {workspace.keys}; pass --force to archive it and create a new one")


def site_key_info(workspace: Workspace) -> PublicKeyInfo:
    """Return the site's public key; raises KeyringError when there is none."""
    path = public_key_path(workspace)
    if not path.exists():
        raise KeyringError(f"no site key in {workspace.keys}; create one with `reckon keys init`")
    public_key = load_public_key(path)
    name = _default_site_name()
    info_path = workspace.keys / SITE_INFO_NAME
    if info_path.exists():
        try:
            name = json.loads(info_path.read_text(encoding="utf-8"))["name"]
        except (ValueError, KeyError) as error:
            raise KeyringError(f"{info_path}: invalid site key record ({error}); "
                               "restore it from a backup or run `reckon keys init --force`")
    return PublicKeyInfo(name, fingerprint_of(public_key), path, own=True)


def load_private_key(workspace: Workspace, passphrase: str) -> ec.EllipticCurvePrivateKey:
    """Decrypt the site's private key; raises KeyringError on a wrong passphrase."""
    path = private_key_path(workspace)
    if not path.exists():
        raise KeyringError(f"no site private key at {path}; create one with `reckon keys init`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase.encode("utf-8"))
    except (ValueError, TypeError):
        # cryptography raises ValueError for a wrong passphrase and TypeError for a missing one.
        raise KeyringError(f"cannot decrypt the site key {path}: wrong passphrase "
                           f"(set {PASSPHRASE_ENV} or enter it at the prompt)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyringError(f"{path} is not an ECDSA P-256 private key")
    return key


def export_public(workspace: Workspace) -> bytes:
    """Return the site's public key as PEM."""
    site_key_info(workspace)
    return public_key_path(workspace).read_bytes()


# -- keyring -------------------------------------------------------------------------------


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM ECDSA P-256 public key; raises KeyringError naming the file otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise KeyringError(f"cannot read public key {path}: {error.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise KeyringError(f"{path} contains a private key; import only the public key "
                           "(the other site creates it with `reckon keys export-public`)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyringError(f"{path} is not a PEM public key "
                           "(expected '-----BEGIN PUBLIC KEY-----')") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyringError(f"{path} is not an ECDSA P-256 public key; Reckoning sites sign "
                           "with P-256 keys")
    return key


def import_public(workspace: Workspace, name: str, source: Path, *,
                  force: bool = False) -> PublicKeyInfo:
    """Add another site's public key to the keyring under `name`."""
    validate_key_name(name)
    public_key = load_public_key(Path(source))
    fingerprint = fingerprint_of(public_key)
    for existing in list_keys(workspace):
        if existing.fingerprint == fingerprint and existing.name != name:
            raise KeyringError(f"{source}: this key is already trusted as {existing.name!r} "
                               f"(fingerprint {fingerprint})")
    target = workspace.keyring / f"{name}{KEYRING_SUFFIX}"
    if target.exists() and not force:
        raise KeyringError(f"the keyring already has a key named {name!r} ({target}); "
                           "choose another name or pass --force to replace it")
    workspace.keyring.mkdir(parents=True, exist_ok=True)
    pem = public_key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    temporary = target.with_suffix(".tmp")
    temporary.write_bytes(pem)
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)
    log.info("imported public key %s fingerprint %s from %s", name, fingerprint, source)
    return PublicKeyInfo(name, fingerprint, target, own=False)


def list_keys(workspace: Workspace) -> list[PublicKeyInfo]:
    """Return every trusted public key: the site's own key first, then the keyring by name."""
    keys: list[PublicKeyInfo] = []
    if public_key_path(workspace).exists():
        keys.append(site_key_info(workspace))
    if workspace.keyring.exists():
        for path in sorted(workspace.keyring.glob(f"*{KEYRING_SUFFIX}")):
            name = path.name[: -len(KEYRING_SUFFIX)]
            keys.append(PublicKeyInfo(name, fingerprint_of(load_public_key(path)), path,
                                      own=False))
    return keys


def find_key(workspace: Workspace, fingerprint: str) -> PublicKeyInfo | None:
    for key in list_keys(workspace):
        if key.fingerprint == fingerprint:
            return key
    return None


# -- helpers -------------------------------------------------------------------------------


def _check_passphrase_strength(passphrase: str) -> None:
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise KeyringError(f"the key passphrase must have at least {MIN_PASSPHRASE_LENGTH} "
                           "characters")


def _default_site_name() -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].lstrip("._-")
    return cleaned or "site"


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _archive_site_key(workspace: Workspace) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    archive = workspace.keys / "archive" / stamp
    archive.mkdir(parents=True, mode=0o700)
    for name in (PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, SITE_INFO_NAME):
        source = workspace.keys / name
        if source.exists():
            shutil.move(str(source), str(archive / name))
    return archive
