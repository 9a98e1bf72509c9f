#!/usr/bin/env python3
"""Verify a Reckoning audit ledger export without the Reckoning software.

Usage:
    python verify_standalone.py export.json --public-key ledger.pub [--checkpoint old.note]

Requires Python 3.9+ and the `cryptography` package only. It checks:
  1. the latest checkpoint is a C2SP signed note signed by the given Ed25519 key;
  2. every entry's leaf hash is SHA-256(0x00 || entry bytes) and the entry records its index;
  3. every entry's RFC 6962 inclusion proof leads to the checkpoint's root;
  4. for a complete export, the Merkle root recomputed over all entries equals the signed
     root, and every earlier checkpoint is signed, matches its prefix of entries and has a
     valid consistency proof to the next one;
  5. with --checkpoint, that the export extends an older checkpoint you saved (nothing was
     removed or changed since).
Exit status: 0 verified, 1 verification failed, 2 unusable input.
"""

import argparse
import base64
import binascii
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXPORT_FORMAT = "reckoning-ledger-export/1"


class Failure(Exception):
    """Verification failed; the message names the check and the entry."""


class Unusable(Exception):
    """The input files cannot be read or parsed."""


# -- RFC 6962 hashing ----------------------------------------------------------------------


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves):
    """Return the RFC 6962 root of a list of leaf hashes, folding the perfect-subtree peaks."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    stack = []  # (level, hash) of completed perfect subtrees, largest first
    for leaf in leaves:
        level, current = 0, leaf
        while stack and stack[-1][0] == level:
            current = node_hash(stack.pop()[1], current)
            level += 1
        stack.append((level, current))
    root = stack[-1][1]
    for _, peak in reversed(stack[:-1]):
        root = node_hash(peak, root)
    return root


def root_from_inclusion_proof(index, size, leaf, proof):
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        raise Failure("leaf index %d is outside a tree of size %d" % (index, size))
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise Failure("inclusion proof for entry %d is too long" % index)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Failure("inclusion proof for entry %d is too short" % index)
    return r


def verify_consistency(size1, size2, root1, root2, proof):
    """RFC 9162 section 2.1.4.2."""
    if size2 < size1:
        raise Failure("consistency proof goes from size %d down to %d" % (size1, size2))
    if size1 == size2:
        if proof or root1 != root2:
            raise Failure("checkpoints of equal size %d disagree" % size1)
        return
    if size1 == 0:
        if proof:
            raise Failure("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise Failure("consistency proof %d -> %d is empty" % (size1, size2))
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise Failure("consistency proof %d -> %d is too long" % (size1, size2))
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        raise Failure("consistency proof %d -> %d does not verify" % (size1, size2))


# -- C2SP signed notes and checkpoints -------------------------------------------------------


def load_public_key(path):
    """Return (name or None, 32-byte Ed25519 key) from a vkey line or a PEM public key."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise Unusable("cannot read public key %s: %s" % (path, error.strerror))
    if "BEGIN PUBLIC KEY" in text:
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise Unusable("%s is not an Ed25519 public key" % path)
        return None, key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    parts = text.strip().split("+", 2)
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except (IndexError, binascii.Error):
        raise Unusable("%s: expected <name>+<key hash>+<base64 key> or a PEM key" % path)
    if len(parts) != 3 or len(raw) != 33 or raw[0] != 1:
        raise Unusable("%s is not an Ed25519 verifier key" % path)
    if key_hash(parts[0], raw[1:]).hex() != parts[1]:
        raise Unusable("%s: the key hash does not match the key" % path)
    return parts[0], raw[1:]


def key_hash(name, public_key):
    return hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]


def open_checkpoint(note, key_name, public_key):
    """Verify the note's signature by the trusted key; return (origin, size, root)."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise Failure("malformed checkpoint note: no blank line before the signatures")
    text, block = note[:cut + 1], note[cut + 2:]
    verified = False
    for line in block.rstrip("\n").split("\n"):
        if not line.startswith("\u2014 "):
            raise Failure("malformed signature line %r" % line[:60])
        try:
            name, encoded = line[2:].split(" ")
            blob = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise Failure("malformed signature line %r" % line[:60])
        if key_name not in (None, name) or blob[:4] != key_hash(name, public_key):
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(blob[4:], text.encode())
        except InvalidSignature:
            raise Failure("checkpoint signature by %s does not verify: the note was modified" % name)
        verified = True
    if not verified:
        raise Failure("checkpoint is not signed by the trusted key")
    lines = text.split("\n")
    try:
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError, binascii.Error):
        raise Failure("malformed checkpoint body")
    if len(root) != 32:
        raise Failure("checkpoint root hash is not 32 bytes")
    return origin, size, root


# -- the export ------------------------------------------------------------------------------


def b64list(values):
    return [base64.b64decode(value, validate=True) for value in values]


def verify_export(export, key_name, public_key, older_note=None, out=print):
    if export.get("format") != EXPORT_FORMAT:
        raise Unusable("not a ledger export (format %r, expected %r)"
                       % (export.get("format"), EXPORT_FORMAT))
    origin, size, root = open_checkpoint(export["checkpoint"], key_name, public_key)
    if origin != export.get("origin"):
        raise Failure("checkpoint origin %r differs from the export's %r" % (origin, export.get("origin")))
    out("checkpoint: signed by the trusted key, origin %s, size %d, root %s" % (origin, size, root.hex()))

    leaves = []
    previous = -1
    for item in export["entries"]:
        index = item["index"]
        body = item["body"].encode("utf-8")
        if export["complete"] and index != previous + 1:
            raise Failure("entry %d is missing: the export jumps from %d to %d"
                          % (previous + 1, previous, index))
        previous = index
        computed = leaf_hash(body)
        if base64.b64decode(item["leaf_hash"]) != computed:
            raise Failure("entry %d: its contents do not match its leaf hash (edited)" % index)
        if json.loads(body).get("index") != index:
            raise Failure("entry %d: its body records another index (moved or inserted)" % index)
        if index < size:
            proof = b64list(item.get("inclusion_proof") or [])
            if root_from_inclusion_proof(index, size, computed, proof) != root:
                raise Failure("entry %d: its inclusion proof does not lead to the signed root" % index)
        leaves.append(computed)
    out("entries: %d checked; leaf hashes and inclusion proofs verify" % len(export["entries"]))

    if export["complete"]:
        if len(leaves) < size:
            raise Failure("the checkpoint covers %d entries but the export has %d: entries were removed"
                          % (size, len(leaves)))
        if merkle_root(leaves[:size]) != root:
            raise Failure("the root over entries 0..%d does not match the signed checkpoint" % (size - 1))
        out("root: recomputed over all %d entries, equals the signed root" % size)
        history = [open_checkpoint(note, key_name, public_key) for note in export.get("checkpoints", [])]
        for number, (_, old_size, old_root) in enumerate(history):
            if old_size > len(leaves) or merkle_root(leaves[:old_size]) != old_root:
                raise Failure("earlier checkpoint %d (size %d) does not match the entries"
                              % (number, old_size))
        for item in export.get("consistency_proofs", []):
            verify_consistency(item["old_size"], item["new_size"],
                               merkle_root(leaves[:item["old_size"]]),
                               merkle_root(leaves[:item["new_size"]]), b64list(item["proof"]))
        out("history: %d earlier checkpoints and %d consistency proofs verify"
            % (len(history), len(export.get("consistency_proofs", []))))
    else:
        out("partial export: the root cannot be recomputed; each entry was checked by its proof")

    if older_note is not None:
        old_origin, old_size, old_root = open_checkpoint(older_note, key_name, public_key)
        if old_origin != origin:
            raise Failure("the older checkpoint is for %r, not %r" % (old_origin, origin))
        if old_size > size:
            raise Failure("the older checkpoint covers %d entries but the export's checkpoint only %d: "
                          "the ledger was truncated or rolled back" % (old_size, size))
        if not export["complete"]:
            raise Failure("a partial export cannot show consistency with an older checkpoint; "
                          "export the whole ledger")
        if merkle_root(leaves[:old_size]) != old_root:
            raise Failure("the ledger does not extend the older checkpoint: entries before %d changed"
                          % old_size)
        out("older checkpoint (size %d): the ledger only grew since" % old_size)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify a Reckoning audit ledger export.")
    parser.add_argument("export", help="export.json written by `reckon ledger export`")
    parser.add_argument("--public-key", required=True,
                        help="the ledger's public key (vkey line or PEM), obtained independently")
    parser.add_argument("--checkpoint", help="an older checkpoint note you saved earlier")
    args = parser.parse_args(argv)
    try:
        key_name, public_key = load_public_key(args.public_key)
        with open(args.export, encoding="utf-8") as handle:
            export = json.load(handle)
        older = None
        if args.checkpoint:
            with open(args.checkpoint, encoding="utf-8") as handle:
                older = handle.read()
        verify_export(export, key_name, public_key, older)
    except Failure as error:
        print("FAILED: %s" % error)
        return 1
    except Unusable as error:
        print("UNUSABLE: %s" % error, file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError) as error:
        print("UNUSABLE: cannot read the export: %r" % error, file=sys.stderr)
        return 2
    print("VERIFIED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
