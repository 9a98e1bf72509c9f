"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verifiers.

Hashes follow RFC 6962 section 2.1: leaf = SHA-256(0x00 || entry), interior node =
SHA-256(0x01 || left || right), and the hash of the empty tree is SHA-256("").
The tree over n leaves splits at k, the largest power of two smaller than n.

Proof generation takes a `subtree_hash(start, end)` callable so that it runs over any
store of hashes: the ledger's node table, or the levels that verification recomputes.
The verifiers are the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHash = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof or its parameters are malformed or do not lead to the expected root."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """Return the largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- recomputing a tree from its leaf hashes -----------------------------------------------


def build_levels(leaf_hashes: bytes) -> list[bytes]:
    """Compute every complete level of the tree from concatenated 32-byte leaf hashes.

    Level 0 is the input; level L contains the hashes of the perfect subtrees of 2**L leaves
    that start at multiples of 2**L, concatenated. An odd last node is not promoted
    (RFC 6962 never pairs it with itself); `root_from_levels` folds such peaks instead.
    """
    if len(leaf_hashes) % HASH_SIZE:
        raise ValueError("leaf hashes must be a concatenation of 32-byte hashes")
    levels = [bytes(leaf_hashes)]
    sha256 = hashlib.sha256
    while len(levels[-1]) >= 2 * HASH_SIZE:
        below = levels[-1]
        pairs = len(below) // (2 * HASH_SIZE)
        levels.append(b"".join(sha256(b"\x01" + below[i:i + 64]).digest()
                               for i in range(0, pairs * 64, 64)))
    return levels


def level_hash(levels: Sequence[bytes], level: int, index: int) -> bytes:
    offset = index * HASH_SIZE
    return levels[level][offset:offset + HASH_SIZE]


def levels_subtree_hash(levels: Sequence[bytes]) -> SubtreeHash:
    """Return a `subtree_hash(start, end)` that reads perfect subtrees from `levels`."""

    def perfect(level: int, index: int) -> bytes:
        return level_hash(levels, level, index)

    return subtree_hasher(perfect)


def root_from_levels(levels: Sequence[bytes], size: int) -> bytes:
    """Return the root of the tree over the first `size` leaves described by `levels`."""
    return root_from_peaks(lambda level, index: level_hash(levels, level, index), size)


def root_from_peaks(perfect: Callable[[int, int], bytes], size: int) -> bytes:
    """Fold the perfect-subtree peaks of a tree of `size` leaves into its RFC 6962 root.

    The binary digits of `size` name the peaks from left (largest) to right. Because the
    RFC 6962 split point is the largest power of two below the size, the root is
    node(peak_1, node(peak_2, ... node(peak_{m-1}, peak_m))), folded from the right.
    """
    if size == 0:
        return EMPTY_ROOT
    peaks = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size & (1 << level):
            peaks.append(perfect(level, start >> level))
            start += 1 << level
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = node_hash(peak, root)
    return root


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return the RFC 6962 root over a list of leaf hashes."""
    levels = build_levels(b"".join(hashes))
    return root_from_levels(levels, len(hashes))


def subtree_hasher(perfect: Callable[[int, int], bytes]) -> SubtreeHash:
    """Turn a lookup of perfect subtrees (level, index) into a hash of any range [start, end).

    Any range that RFC 6962 proofs ask for splits into a perfect, aligned left part and a
    recursively split right part, so a range costs O(log n) lookups.
    """

    def subtree_hash(start: int, end: int) -> bytes:
        size = end - start
        if size <= 0:
            raise ValueError(f"empty subtree [{start}, {end})")
        if size & (size - 1) == 0 and start % size == 0:
            return perfect(size.bit_length() - 1, start // size)
        split = largest_power_of_two_below(size)
        return node_hash(subtree_hash(start, start + split), subtree_hash(start + split, end))

    return subtree_hash


# -- proof generation (RFC 6962 section 2.1.1 and 2.1.2) -------------------------------------


def inclusion_proof(subtree_hash: SubtreeHash, index: int, size: int) -> list[bytes]:
    """Return the audit path PATH(index, D[0:size]) for leaf `index`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    # Walk down from the root; each step records the sibling subtree and keeps the half
    # that contains the leaf. The proof lists siblings from the leaf upwards.
    while end - start > 1:
        split = largest_power_of_two_below(end - start)
        if index < start + split:
            proof.append(subtree_hash(start + split, end))
            end = start + split
        else:
            proof.append(subtree_hash(start, start + split))
            start = start + split
    proof.reverse()
    return proof


def consistency_proof(subtree_hash: SubtreeHash, old_size: int, new_size: int) -> list[bytes]:
    """Return PROOF(old_size, D[0:new_size]) of RFC 6962 section 2.1.2."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"cannot prove consistency from size {old_size} to {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    return _subproof(subtree_hash, old_size, 0, new_size, True)


def _subproof(subtree_hash: SubtreeHash, m: int, start: int, end: int, complete: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if complete else [subtree_hash(start, end)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return _subproof(subtree_hash, m, start, start + k, complete) + [subtree_hash(start + k, end)]
    return _subproof(subtree_hash, m - k, start + k, end, False) + [subtree_hash(start, start + k)]


# -- proof verification (RFC 9162 section 2.1.3.2 and 2.1.4.2) -------------------------------


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Return the root that `proof` leads to from `leaf`; raise ProofError if malformed."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("leaf hash and proof hashes must be 32 bytes")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
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
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf `index` is in the tree of `size` with `root`."""
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    if computed != root:
        raise ProofError(f"inclusion proof for leaf {index} leads to root {computed.hex()}, "
                         f"expected {root.hex()}")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Raise ProofError unless `proof` shows the tree of new_size extends the one of old_size."""
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"new size {new_size} is smaller than old size {old_size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("consistency proof hashes must be 32 bytes")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("roots differ although the sizes are equal")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")

    path = list(proof)
    # When old_size is a power of two the old root is itself the first node of the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than expected")
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
    if sn != 0:
        raise ProofError("consistency proof is shorter than expected")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root {old_root.hex()}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root {new_root.hex()}")
