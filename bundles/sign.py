"""Sign and verify bundles in the OpenSSF model-signing format.

The signature, <bundle>/model.sig, is a sigstore bundle (v0.3 JSON) holding a DSSE envelope
over an in-toto statement that lists the SHA-256 of every other file in the bundle. It is
written by the model-signing library's elliptic-key signer with the site's P-256 key, so a
receiving site can check it with the standard CLI:

    model_signing verify key --signature <bundle>/model.sig --public_key site.pub <bundle>

`verify_bundle` runs that same check through the library and, before it, the file-set
checks of bundles.manifest, which name the exact file that differs.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import model_signing

from appliance.workspace import Workspace
from bundles import keys
from bundles.errors import BundleError, IntegrityError
from bundles.manifest import SIGNATURE_NAME, make_read_only, scan_files, verify_file_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """The result of a successful verification."""

    digest: str
    path: Path
    signer: keys.PublicKeyInfo
    files: int
    manifest: dict

    def as_dict(self) -> dict:
        return {"digest": self.digest, "path": str(self.path), "files": self.files,
                "signer": self.signer.name, "fingerprint": self.signer.fingerprint}


def _hashing_config():
    # Only model.sig is left out of the signed file set. model-signing also leaves out
    # .git* paths by default; bundles never contain them, and verify_file_set rejects any
    # file not listed in SHA256SUMS, so nothing can hide there.
    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])


def sign_version(workspace: Workspace, digest: str, passphrase: str, *,
                 replace: bool = False) -> keys.PublicKeyInfo:
    """Sign bundles/<digest>/ with the site key and write model.sig; return the signer.

    The bundle is verified first, so a bundle changed after freezing is never signed.
    Raises BundleError when it is already signed, unless `replace`.
    """
    from bundles.freeze import load_version, record_signature

    version = load_version(workspace, digest)
    verify_file_set(version.path, version.digest)
    signature_path = version.path / SIGNATURE_NAME
    if signature_path.exists() and not replace:
        raise BundleError(f"version {version.digest} is already signed ({signature_path}); "
                          "pass --replace to sign it again")
    signer = keys.site_key_info(workspace)
    # Decrypting here first gives a clear wrong-passphrase error instead of the library's.
    keys.load_private_key(workspace, passphrase)

    # Sign into a temporary file outside the bundle, then move it in, so the read-only
    # bundle is writable only for the rename.
    with tempfile.TemporaryDirectory(dir=workspace.bundles, prefix=".sign-") as scratch:
        temporary = Path(scratch) / SIGNATURE_NAME
        config = model_signing.signing.Config().use_elliptic_key_signer(
            private_key=keys.private_key_path(workspace),
            # model-signing 1.1.1 types this as str but passes it to cryptography, which
            # needs bytes.
            password=passphrase.encode("utf-8"))
        config.set_hashing_config(_hashing_config()).sign(version.path, temporary)
        os.chmod(version.path, 0o755)
        try:
            if signature_path.exists():
                os.chmod(signature_path, 0o644)
            os.replace(temporary, signature_path)
        finally:
            make_read_only(version.path)

    signed_at = time.time()
    record_signature(workspace, version.digest, signer, signed_at)
    log.info("signed version %s with key %s fingerprint %s", version.digest, signer.name,
             signer.fingerprint)
    return signer


def signature_fingerprint(signature_path: Path) -> str | None:
    """Return the public-key hint (our fingerprint) recorded in a signature, or None."""
    try:
        bundle = json.loads(signature_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntegrityError(f"{signature_path}: not a readable sigstore bundle ({error})") from None
    if not isinstance(bundle, dict):
        raise IntegrityError(f"{signature_path}: not a sigstore bundle (expected a JSON object)")
    hint = (((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint"))
    return hint if isinstance(hint, str) and hint else None


def verify_bundle(path: Path, *, workspace: Workspace,
                  expected_digest: str | None = None) -> Verification:
    """Verify a bundle folder: every digest, the exact file set and the signature.

    The signature must come from the site's own key or a key in the keyring. Raises
    IntegrityError naming the file or key that fails.
    """
    path = Path(path)
    digest, manifest = verify_file_set(path, expected_digest)
    signature_path = path / SIGNATURE_NAME
    if not signature_path.is_file():
        raise IntegrityError(f"{path}: {SIGNATURE_NAME} is missing; the bundle is not signed "
                             "(sign it with `reckon bundle sign`)")
    signer = _find_signer(workspace, signature_path)
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=signer.path).set_hashing_config(_hashing_config()).verify(
            path, signature_path)
    except Exception as error:  # the library raises ValueError, InvalidSignature, protobuf errors
        raise IntegrityError(f"{signature_path}: signature verification with key "
                             f"{signer.name} ({signer.fingerprint}) failed: "
                             f"{_describe(error)}") from None
    _check_signed_resources(path, signature_path)
    log.info("verified version %s signed by %s fingerprint %s", digest, signer.name,
             signer.fingerprint)
    return Verification(digest, path, signer, len(manifest["files"]) + 2, manifest)


def _find_signer(workspace: Workspace, signature_path: Path) -> keys.PublicKeyInfo:
    fingerprint = signature_fingerprint(signature_path)
    trusted = keys.list_keys(workspace)
    if fingerprint is None:
        raise IntegrityError(f"{signature_path}: the signature names no public key "
                             "(verificationMaterial.publicKey.hint is empty)")
    for key in trusted:
        if key.fingerprint == fingerprint:
            return key
    raise IntegrityError(
        f"{signature_path}: signed by an unknown key with fingerprint {fingerprint}; if you "
        "trust the sending site, import its public key with "
        "`reckon keys import-public NAME FILE` and compare the fingerprint with the sender")


def _check_signed_resources(path: Path, signature_path: Path) -> None:
    """Require that the signed statement covers every file except model.sig.

    model-signing honours ignore_paths stored inside the signature, so a signature made with
    extra ignore_paths would pass while leaving files unsigned.
    """
    bundle = json.loads(signature_path.read_text(encoding="utf-8"))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    signed = {resource["name"] for resource in statement["predicate"]["resources"]}
    present = set(scan_files(path, exclude=frozenset({SIGNATURE_NAME})))
    if signed != present:
        unsigned = sorted(present - signed)
        raise IntegrityError(f"{signature_path}: the signature does not cover "
                             f"{', '.join(unsigned) or 'the same file set'}")


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

