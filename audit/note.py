"""C2SP signed notes with Ed25519 keys, and tlog checkpoints carried in them.

Formats (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint):

- A note is UTF-8 text ending in a newline, then a blank line, then one or more
  signature lines "— <key name> <base64(key hash || signature)>\\n" (U+2014 EM DASH).
- The key hash is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public key) for
  Ed25519 (signature type 0x01); the signature covers the note text, final newline included.
- Verifier keys are written "<name>+<key hash hex>+<base64(0x01 || public key)>" and signer
  keys "PRIVATE+KEY+<name>+<key hash hex>+<base64(0x01 || private key)>", as in Go's
  golang.org/x/mod/sumdb/note.
- A checkpoint body is "<origin>\\n<tree size>\\n<base64 root hash>\\n" plus optional
  extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

from appliance.errors import ReckonError

ALGORITHM_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "
MAX_SIGNATURES = 100


class NoteError(ReckonError):
    """A note, checkpoint or key is malformed, or no signature from a trusted key verifies."""


def key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALGORITHM_ED25519]) + public_key).digest()[:4]


def _check_key_name(name: str) -> None:
    if not name or "+" in name or any(ch.isspace() for ch in name):
        raise NoteError(f"invalid key name {name!r}: it must be non-empty and contain no "
                        "'+' or whitespace")


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    public_key: bytes

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.name, self.public_key)

    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ALGORITHM_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, text: str) -> "Verifier":
        """Parse "<name>+<hash hex>+<base64(0x01 || key)>", checking the hash."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError(f"invalid verifier key {text.strip()[:80]!r}: expected "
                            "<name>+<key hash hex>+<base64 key>")
        name, hash_hex, encoded = parts
        _check_key_name(name)
        try:
            raw = base64.b64decode(encoded, validate=True)
            expected_hash = bytes.fromhex(hash_hex)
        except (binascii.Error, ValueError) as error:
            raise NoteError(f"invalid verifier key for {name!r}: {error}") from None
        if len(raw) != 33 or raw[0] != ALGORITHM_ED25519:
            raise NoteError(f"verifier key for {name!r} is not an Ed25519 key "
                            "(expected 0x01 followed by 32 bytes)")
        verifier = cls(name, raw[1:])
        if verifier.key_hash != expected_hash:
            raise NoteError(f"verifier key for {name!r} has key hash {hash_hex}, but its key "
                            f"hashes to {verifier.key_hash.hex()}")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 private key that signs notes."""

    name: str
    private_key: bytes

    @classmethod
    def generate(cls, name: str) -> "Signer":
        _check_key_name(name)
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return cls(name, raw)

    @property
    def verifier(self) -> Verifier:
        public = Ed25519PrivateKey.from_private_bytes(self.private_key).public_key()
        return Verifier(self.name, public.public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw))

    def skey(self) -> str:
        encoded = base64.b64encode(bytes([ALGORITHM_ED25519]) + self.private_key).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_hash.hex()}+{encoded}"

    @classmethod
    def from_skey(cls, text: str) -> "Signer":
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("invalid signer key: expected PRIVATE+KEY+<name>+<hash>+<base64 key>")
        name, hash_hex, encoded = parts[2:]
        _check_key_name(name)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error as error:
            raise NoteError(f"invalid signer key for {name!r}: {error}") from None
        if len(raw) != 33 or raw[0] != ALGORITHM_ED25519:
            raise NoteError(f"signer key for {name!r} is not an Ed25519 key")
        signer = cls(name, raw[1:])
        if signer.verifier.key_hash.hex() != hash_hex:
            raise NoteError(f"signer key for {name!r} does not match its key hash {hash_hex}")
        return signer

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private_key).sign(message)


def load_verifier(path: str | Path) -> Verifier:
    """Read a verifier key file: a vkey line, or a PEM Ed25519 public key (named by origin later).

    A PEM key carries no name, so it gets the placeholder name "pem"; `open_note` then
    matches it by key only (see `Verifier.name`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise NoteError(f"cannot read public key {path}: {error.strerror}") from None
    if "BEGIN PUBLIC KEY" in text:
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise NoteError(f"{path}: public key is not an Ed25519 key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return Verifier("pem", raw)
    try:
        return Verifier.from_vkey(text)
    except NoteError as error:
        raise NoteError(f"{path}: {error}") from None


def save_signer(signer: Signer, key_path: Path, public_path: Path) -> None:
    """Write the signer key with mode 0600 (created that way, never widened) and its vkey."""
    key_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(signer.skey() + "\n")
    public_path.write_text(signer.verifier.vkey() + "\n", encoding="utf-8")


def load_signer(key_path: Path) -> Signer:
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise NoteError(f"{key_path} has mode {mode:o}; the ledger key must be readable by its "
                        f"owner only. Run: chmod 600 {key_path}")
    return Signer.from_skey(key_path.read_text(encoding="utf-8"))


# -- signed notes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes


def sign_note(text: str, signers: list[Signer]) -> str:
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("note text must end in a newline and contain no blank line")
    message = text.encode()
    lines = []
    for signer in signers:
        blob = signer.verifier.key_hash + signer.sign(message)
        lines.append(f"{SIGNATURE_PREFIX}{signer.name} {base64.b64encode(blob).decode()}\n")
    return text + "\n" + "".join(lines)


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and parsed signature lines, without verifying."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, block = note[:cut + 1], note[cut + 2:]
    if not block.endswith("\n"):
        raise NoteError("malformed note: the signature block must end in a newline")
    signatures = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"malformed note signature line {line[:60]!r}: it must start "
                            "with an em dash and a space")
        try:
            name, encoded = line[len(SIGNATURE_PREFIX):].split(" ")
            blob = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise NoteError(f"malformed note signature line {line[:60]!r}") from None
        if len(blob) < 5:
            raise NoteError(f"note signature by {name!r} is too short")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    if not signatures:
        raise NoteError("note has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, signatures


def open_note(note: str, verifier: Verifier) -> str:
    """Return the note text if a signature by `verifier` verifies; raise NoteError otherwise.

    Signatures by other keys are skipped, as the signed-note spec requires. A signature that
    claims the trusted key (same name and key hash) but fails to verify is an error. A
    verifier loaded from PEM ("pem") matches any name whose key hash fits its key.
    """
    text, signatures = split_note(note)
    message = text.encode()
    for signature in signatures:
        name_matches = verifier.name in (signature.name, "pem")
        if name_matches and key_hash(signature.name, verifier.public_key) == signature.key_hash:
            if verifier.verify(message, signature.signature):
                return text
            raise NoteError(f"the signature by {signature.name!r} does not verify: the note "
                            "was modified after signing")
    names = ", ".join(f"{s.name} ({s.key_hash.hex()})" for s in signatures)
    raise NoteError(f"note is not signed by the trusted key {verifier.name} "
                    f"({verifier.key_hash.hex()}); it is signed by: {names}")


# -- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint: origin, tree size and root hash."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("malformed checkpoint: expected origin, size and root hash lines")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not origin:
            raise NoteError("malformed checkpoint: empty origin line")
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            raise NoteError(f"malformed checkpoint: tree size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error:
            raise NoteError(f"malformed checkpoint: root hash {root_text!r} is not base64") from None
        if len(root) != 32:
            raise NoteError(f"malformed checkpoint: root hash is {len(root)} bytes, expected 32")
        return cls(origin, int(size_text), root, tuple(lines[3:-1]))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    return sign_note(checkpoint.body(), [signer])


def open_checkpoint(note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note and parse it; check its origin when given."""
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint is for origin {checkpoint.origin!r}, not this ledger "
                        f"({origin!r})")
    return checkpoint
