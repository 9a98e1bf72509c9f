"""C2SP signed notes and tlog checkpoints.

The known-answer vector is the example key and note of golang.org/x/mod/sumdb/note, the
reference implementation of the signed-note format. Ed25519 is deterministic, so signing the
same text with the same key must reproduce the published signature byte for byte.
"""

import base64

import pytest

from audit.note import (Checkpoint, NoteError, Signer, Verifier, key_hash, load_verifier, open_checkpoint,
                        open_note, sign_checkpoint, sign_note, split_note)

GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = (GO_TEXT + "\n\u2014 PeterNeumann "
           "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")


def test_go_reference_keys_parse():
    signer = Signer.from_skey(GO_SIGNER_KEY)
    verifier = Verifier.from_vkey(GO_VERIFIER_KEY)
    assert signer.verifier == verifier
    assert verifier.key_hash.hex() == "c74f20a3"
    assert signer.skey() == GO_SIGNER_KEY
    assert verifier.vkey() == GO_VERIFIER_KEY


def test_go_reference_signature_reproduced():
    assert sign_note(GO_TEXT, [Signer.from_skey(GO_SIGNER_KEY)]) == GO_NOTE


def test_go_reference_note_opens():
    assert open_note(GO_NOTE, Verifier.from_vkey(GO_VERIFIER_KEY)) == GO_TEXT


def test_modified_text_rejected():
    tampered = GO_NOTE.replace("cryptography", "cryptographY")
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, Verifier.from_vkey(GO_VERIFIER_KEY))


def test_other_key_rejected():
    other = Signer.generate("PeterNeumann")
    forged = sign_note(GO_TEXT, [other])
    with pytest.raises(NoteError, match="not signed by the trusted key"):
        open_note(forged, Verifier.from_vkey(GO_VERIFIER_KEY))


def test_unknown_signatures_skipped():
    other = Signer.generate("someone-else")
    note = sign_note(GO_TEXT, [other, Signer.from_skey(GO_SIGNER_KEY)])
    assert open_note(note, Verifier.from_vkey(GO_VERIFIER_KEY)) == GO_TEXT


def test_key_hash_definition():
    verifier = Verifier.from_vkey(GO_VERIFIER_KEY)
    import hashlib
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()[:4]
    assert key_hash("PeterNeumann", verifier.public_key) == expected


@pytest.mark.parametrize("bad", [
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # wrong hash
    "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # bad algorithm byte
    "PeterNeumann+c74f20a3",
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
])
def test_invalid_verifier_keys(bad):
    with pytest.raises(NoteError):
        Verifier.from_vkey(bad)


@pytest.mark.parametrize("bad", [
    GO_TEXT,                                            # no signatures
    GO_TEXT + "\n",                                     # empty signature block
    GO_TEXT + "\n- PeterNeumann abc=\n",                # hyphen, not em dash
    GO_TEXT + "\n\u2014 PeterNeumann !!!\n",            # not base64
])
def test_malformed_notes(bad):
    with pytest.raises(NoteError):
        split_note(bad)


def test_checkpoint_round_trip():
    signer = Signer.generate("example.com/log")
    checkpoint = Checkpoint("example.com/log", 42, bytes(range(32)))
    note = sign_checkpoint(checkpoint, signer)
    assert note.startswith("example.com/log\n42\n" + base64.b64encode(bytes(range(32))).decode() + "\n\n")
    assert open_checkpoint(note, signer.verifier, "example.com/log") == checkpoint
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(note, signer.verifier, "other.example/log")


@pytest.mark.parametrize("body", [
    "origin\n",
    "origin\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
    "origin\n012\n" + base64.b64encode(bytes(32)).decode() + "\n",
    "origin\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
    "\n1\n" + base64.b64encode(bytes(32)).decode() + "\n",
])
def test_malformed_checkpoints(body):
    with pytest.raises(NoteError):
        Checkpoint.parse(body)


def test_load_verifier_pem(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    verifier = Verifier.from_vkey(GO_VERIFIER_KEY)
    pem = Ed25519PublicKey.from_public_bytes(verifier.public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    assert open_note(GO_NOTE, load_verifier(path)) == GO_TEXT
