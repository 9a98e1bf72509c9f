"""Exact and near-duplicate detection for examples, task requests and the eval set.

Two levels, cheap first:

* Exact: every example (history without the system turn, plus the target action) is
  normalised (whitespace collapsed, keys sorted, tool-call ids dropped, 25.0 written as 25,
  JSON-string arguments parsed) and hashed with BLAKE2b. Equal hashes are duplicates.
* Near: task requests are compared with MinHash/LSH (datasketch) over content-word
  unigrams and bigrams. Only requests whose normalised text is new get a MinHash.

Number policy: two requests whose numbers differ are never near duplicates, because in
this domain the numbers carry the task ("level 3" and "level 4" have different rates).
A trivial rewording with the same numbers ("What is the rate..." and "what's the rate...")
is a near duplicate. The same policy applies to the leakage guard against the eval set.
NOTE: numbers written as words ("twenty-five") are not normalised to digits.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from datasketch import MinHash, MinHashLSH

from appliance.chat import ArgumentsError, parse_arguments
from appliance.errors import ReckonError

NUM_PERM = 128
MINHASH_SEED = 1
NEAR_DUPLICATE_THRESHOLD = 0.7
LEAKAGE_THRESHOLD = 0.5

_WORD = re.compile(r"[^\W_]+(?:[.,][0-9]+)*", re.UNICODE)
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:[.,][0-9]+)*)$")

# Function words and pleasantries that a trivial rewording adds or removes. Kept short on
# purpose: words such as "not", "without" or "before" change the meaning and stay.
STOPWORDS = frozenset("""
a an the is are was were be been being of for to in on at by with from as and or
what whats which who whom whose how please tell me my i you your can could would
will shall should do does did this that these those it its there here s kindly
hi hello hey thanks thank cheers sorry bother quick question good morning afternoon
evening dear regards
""".split())


# -- value normalisation ---------------------------------------------------------------------


def normalise_number(value: float | int) -> int | float:
    """Return 25 for 25.0, so both spellings hash the same; NaN and infinities unchanged."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def normalise_value(value: Any) -> Any:
    """Return a copy with whitespace-collapsed strings and normalised numbers."""
    if isinstance(value, dict):
        return {str(key): normalise_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise_value(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return normalise_number(value)
    if isinstance(value, str):
        return collapse_whitespace(value)
    return value


def collapse_whitespace(text: str) -> str:
    """Collapse runs of whitespace to one space and strip (str.split is far faster than re)."""
    return " ".join(text.split())


def _normalise_content(content: Any) -> Any:
    """Tool results are usually JSON text: compare them as values, not as spellings."""
    if isinstance(content, str):
        stripped = content.strip()
        if stripped[:1] in ("{", "["):
            try:
                return {"json": normalise_value(json.loads(stripped))}
            except json.JSONDecodeError:
                pass
    return normalise_value(content)


def normalise_message(message: dict) -> dict:
    """Return the parts of a message that decide what it means, normalised."""
    normalised: dict[str, Any] = {"role": message.get("role"),
                                  "content": _normalise_content(message.get("content") or "")}
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        try:
            arguments = parse_arguments(function.get("arguments"))
        except ArgumentsError:
            arguments = {"unparsed": normalise_value(str(function.get("arguments")))}
        calls.append({"name": function.get("name"), "arguments": normalise_value(arguments)})
    if calls:
        normalised["tool_calls"] = calls
    if message.get("role") == "tool":
        normalised["name"] = message.get("name")
    return normalised


def message_key(message: dict) -> bytes:
    return json.dumps(normalise_message(message), ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def message_keys(messages: list[dict], cache: dict | None = None) -> list[bytes]:
    """Return `message_key` of each message; system turns get b"" (hashing skips them).

    `cache` maps the content of user and tool messages to their keys, so that the K samples
    of one task, which share the request and often the tool results, pay for them once.
    """
    keys = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            keys.append(b"")
            continue
        content = message.get("content")
        if cache is None or role == "assistant" or not isinstance(content, str):
            keys.append(message_key(message))
            continue
        cache_key = (role, message.get("name"), content)
        key = cache.get(cache_key)
        if key is None:
            key = cache[cache_key] = message_key(message)
        keys.append(key)
    return keys


def example_hashes(messages: list[dict], decision_indices: Iterable[int],
                   keys: list[bytes] | None = None) -> dict[int, bytes]:
    """Return the exact-duplicate hash of each decision's example (history + target).

    The system turn is left out because rendering replaces it with the pack's prompt.
    The history hash is chained, so a trace costs one pass over its messages. `keys` are
    the messages' `message_keys` when the caller already has them.
    """
    wanted = set(decision_indices)
    hashes: dict[int, bytes] = {}
    history = hashlib.blake2b(digest_size=16)
    keys = keys if keys is not None else message_keys(messages)
    for index, message in enumerate(messages):
        key = keys[index]
        if index in wanted:
            example = history.copy()
            example.update(b"\x1etarget\x1e" + key)
            hashes[index] = example.digest()
        if message.get("role") != "system":
            history.update(b"\x1e" + key)
    return hashes


# -- request text ------------------------------------------------------------------------------


def normalise_request(text: str) -> str:
    """Lower-case the words of a request, normalise numbers and drop punctuation."""
    words = []
    for word in _WORD.findall(text.casefold()):
        if _NUMBER.match(word):
            word = _normalise_number_text(word)
        words.append(word)
    return " ".join(words)


def _normalise_number_text(word: str) -> str:
    """"25.0" -> "25", "25.50" -> "25.5", "1,000" -> "1000"."""
    compact = word.replace(",", "") if re.fullmatch(r"[0-9]{1,3}(,[0-9]{3})+", word) else word
    compact = compact.replace(",", ".")
    try:
        value = float(compact)
    except ValueError:
        return word
    value = normalise_number(value)
    return str(value) if isinstance(value, int) else repr(value)


def request_numbers(normalised: str) -> tuple[str, ...]:
    """Return the sorted numbers of a normalised request; the near-duplicate policy key."""
    return tuple(sorted(word for word in normalised.split() if _NUMBER.match(word)))


def _stem(word: str) -> str:
    """Fold a plain English plural ("employees") onto its singular; numbers unchanged."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss") and word.isalpha():
        return word[:-1]
    return word


def request_shingles(normalised: str) -> set[str]:
    """Content-word unigrams and bigrams of a normalised request."""
    words = [_stem(word) for word in normalised.split() if word not in STOPWORDS]
    shingles = set(words)
    shingles.update(f"{first} {second}" for first, second in zip(words, words[1:]))
    return shingles


def shingle_hash(data: bytes) -> int:
    """32-bit shingle hash. CRC-32 is weak alone, but datasketch's affine32 scheme mixes
    every input through the MurmurHash3 finalizer first, and CRC-32 is several times
    cheaper than the default SHA-1."""
    return zlib.crc32(data)


# Building a MinHash draws its permutations from a seeded RandomState, which costs more
# than hashing a short request, so every MinHash shares one template's permutations.
_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, hashfunc=shingle_hash)


def request_minhash(normalised: str) -> MinHash:
    minhash = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, scheme=_TEMPLATE.scheme,
                      permutations=_TEMPLATE.permutations, hashfunc=shingle_hash)
    shingles = request_shingles(normalised)
    if shingles:
        minhash.update_batch([shingle.encode("utf-8") for shingle in sorted(shingles)])
    return minhash


def exact_request_key(normalised: str) -> str:
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class Match:
    key: str              # the key of the earlier, kept request
    similarity: float     # estimated Jaccard; 1.0 for an exact match


class RequestIndex:
    """Exact and MinHash/LSH index of request texts, with the number policy applied."""

    def __init__(self, threshold: float):
        if not 0.0 < threshold <= 1.0:
            raise ReckonError(f"near-duplicate threshold {threshold} must be in (0, 1]")
        self.threshold = threshold
        # datasketch needs at least two bands, which a threshold near 1 does not give. The
        # LSH only proposes candidates, so `find` applies the real threshold to them.
        self.lsh = MinHashLSH(threshold=min(threshold, 0.9), num_perm=NUM_PERM)
        self.exact: dict[str, str] = {}
        self.minhashes: dict[str, MinHash] = {}
        self.numbers: dict[str, tuple[str, ...]] = {}
        self.number_counts: Counter = Counter()

    def __len__(self) -> int:
        return len(self.exact)

    def find(self, normalised: str, minhash: MinHash | None = None) -> Match | None:
        """Return the indexed request that `normalised` duplicates, or None."""
        exact = self.exact.get(exact_request_key(normalised))
        if exact is not None:
            return Match(exact, 1.0)
        # The number policy makes a request with unseen numbers new without an LSH query.
        numbers = request_numbers(normalised)
        if not self.number_counts.get(numbers):
            return None
        minhash = minhash or request_minhash(normalised)
        best: Match | None = None
        for candidate in self.lsh.query(minhash):
            if self.numbers[candidate] != numbers:
                continue
            similarity = minhash.jaccard(self.minhashes[candidate])
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = Match(candidate, similarity)
        return best

    def add(self, key: str, normalised: str, minhash: MinHash | None = None) -> None:
        exact = exact_request_key(normalised)
        if exact in self.exact:
            return
        self.exact[exact] = key
        minhash = minhash or request_minhash(normalised)
        self.minhashes[key] = minhash
        self.numbers[key] = request_numbers(normalised)
        self.number_counts[self.numbers[key]] += 1
        self.lsh.insert(key, minhash)


# -- eval set ------------------------------------------------------------------------------


def eval_requests(path: Path) -> list[tuple[str, str]]:
    """Read (case id, request text) pairs from an eval set JSONL file.

    A case gives its request as task.request. A case without one falls back to the user
    turns of "question", which is a list of turns, each a list of messages.
    """
    cases = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ReckonError(f"cannot read the eval set {path}: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as error:
            raise ReckonError(f"{path}: line {number}: invalid JSON: {error.msg}") from None
        if not isinstance(case, dict):
            raise ReckonError(f"{path}: line {number}: a case must be a JSON object")
        request = (case.get("task") or {}).get("request") if isinstance(case.get("task"), dict) else None
        if not isinstance(request, str) or not request.strip():
            request = _question_user_text(case.get("question"))
        if not request:
            raise ReckonError(f"{path}: line {number}: case has neither task.request nor a "
                              "user message in question; the leakage guard needs the request")
        cases.append((str(case.get("id", f"line-{number}")), request))
    return cases


def _question_user_text(question: Any) -> str:
    texts = []
    for turn in question or []:
        messages = turn if isinstance(turn, list) else [turn]
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user":
                texts.append(str(message.get("content") or ""))
    return "\n".join(texts).strip()
