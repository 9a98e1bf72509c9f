"""RFC 6962 Merkle hashing and proofs against the published Certificate Transparency vectors.

The vectors are the 8-leaf reference inputs, roots and proofs used by the RFC 6962 test
suites of google/certificate-transparency and transparency-dev/merkle (proof/verify_test.go).
Leaf numbers there are 1-based; the indexes below are 0-based.
"""

import hashlib

import pytest

from audit.merkle import (EMPTY_ROOT, ProofError, build_levels, consistency_proof, inclusion_proof,
                          leaf_hash, levels_subtree_hash, node_hash, root_from_inclusion_proof,
                          root_from_leaf_hashes, root_from_levels, verify_consistency,
                          verify_inclusion)

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]

ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]

# (0-based leaf index, tree size, audit path)
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]

# (old size, new size, consistency proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

HASHES = [leaf_hash(leaf) for leaf in LEAVES]
LEVELS = build_levels(b"".join(HASHES))
SUBTREE = levels_subtree_hash(LEVELS)


def test_empty_tree_root():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert root_from_levels(build_levels(b""), 0) == EMPTY_ROOT


def test_hash_prefixes():
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size):
    assert root_from_leaf_hashes(HASHES[:size]) == ROOTS[size - 1]
    assert root_from_levels(LEVELS, size) == ROOTS[size - 1]


@pytest.mark.parametrize("index,size,path", INCLUSION)
def test_reference_inclusion_proofs(index, size, path):
    expected = [bytes.fromhex(h) for h in path]
    assert inclusion_proof(SUBTREE, index, size) == expected
    verify_inclusion(index, size, HASHES[index], expected, ROOTS[size - 1])


@pytest.mark.parametrize("old,new,path", CONSISTENCY)
def test_reference_consistency_proofs(old, new, path):
    expected = [bytes.fromhex(h) for h in path]
    assert consistency_proof(SUBTREE, old, new) == expected
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], expected)


@pytest.mark.parametrize("index,size,path", [case for case in INCLUSION if case[2]])
def test_inclusion_rejects_corruption(index, size, path):
    proof = [bytes.fromhex(h) for h in path]
    root = ROOTS[size - 1]
    leaf = HASHES[index]
    bad_cases = [
        (index + 1, size, leaf, proof, root),
        (index ^ 2, size, leaf, proof, root),
        (index, size * 2, leaf, proof, root),
        (index, size, leaf_hash(b"WrongLeaf"), proof, root),
        (index, size, leaf, proof, EMPTY_ROOT),
        (index, size, leaf, proof + [root], root),
        (index, size, leaf, [root] + proof, root),
        (index, size, leaf, proof[:-1], root),
    ]
    for position in range(len(proof)):
        flipped = list(proof)
        flipped[position] = bytes([flipped[position][0] ^ 8]) + flipped[position][1:]
        bad_cases.append((index, size, leaf, flipped, root))
    for case in bad_cases:
        with pytest.raises(ProofError):
            verify_inclusion(*case)


@pytest.mark.parametrize("old,new,path", [case for case in CONSISTENCY if case[2]])
def test_consistency_rejects_corruption(old, new, path):
    proof = [bytes.fromhex(h) for h in path]
    root1, root2 = ROOTS[old - 1], ROOTS[new - 1]
    bad_cases = [
        (old - 1, new, root1, root2, proof),
        (old + 1, new, root1, root2, proof),
        (old, new * 2, root1, root2, proof),
        (old, new, root2, root1, proof),
        (old, new, root1, root2, []),
        (old, new, root1, root2, proof + [root1]),
        (old, new, root1, root2, [root2] + proof),
        (old, new, root1, root2, proof[:-1]),
    ]
    for position in range(len(proof)):
        flipped = list(proof)
        flipped[position] = bytes([flipped[position][0] ^ 16]) + flipped[position][1:]
        bad_cases.append((old, new, root1, root2, flipped))
    for case in bad_cases:
        if case[0] <= 0:
            continue
        with pytest.raises(ProofError):
            verify_consistency(*case)


def test_proofs_for_every_size_up_to_40():
    hashes = [leaf_hash(str(i).encode()) for i in range(40)]
    levels = build_levels(b"".join(hashes))
    subtree = levels_subtree_hash(levels)
    for size in range(1, 41):
        root = root_from_leaf_hashes(hashes[:size])
        assert root_from_levels(levels, size) == root
        for index in range(size):
            proof = inclusion_proof(subtree, index, size)
            assert root_from_inclusion_proof(index, size, hashes[index], proof) == root
        for old in range(0, size + 1):
            old_root = root_from_leaf_hashes(hashes[:old])
            verify_consistency(old, size, old_root, root, consistency_proof(subtree, old, size))


def test_proof_arguments_out_of_range():
    with pytest.raises(ProofError):
        inclusion_proof(SUBTREE, 8, 8)
    with pytest.raises(ProofError):
        consistency_proof(SUBTREE, 5, 4)
    with pytest.raises(ProofError):
        verify_inclusion(0, 0, HASHES[0], [], EMPTY_ROOT)
