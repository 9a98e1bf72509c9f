"""Balancing: count examples per tool, rule and outcome; raise floors and apply caps.

A category is "dimension=value": tool=lookup_rate (the target's first tool, "(text)" for a
plain answer), rule=<rule id> (a pack rule that applied to the trace, whether or not it
needed to fire) or outcome=escalate (the trace's outcome).

Caps run first. Examples are visited in a hash order that does not depend on the task
order of the store, and an example is dropped once any of its capped categories is full.
Floors then oversample: every example of a category below its floor gets a repeat count
ceil(floor / count), up to `max_repeat`, without pushing a capped category past its cap.
Repeats are recorded per example; floors that stay unmet are reported, never hidden.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

from appliance.errors import ReckonError

DIMENSIONS = ("tool", "rule", "outcome")
DEFAULT_MAX_REPEAT = 10


@dataclass
class Limit:
    dimension: str
    value: str
    count: int

    @property
    def category(self) -> str:
        return f"{self.dimension}={self.value}"


def parse_limit(spec: str, option: str = "--floor") -> Limit:
    """Parse "outcome=escalate:50" into a Limit; the error names the option and the fix."""
    dimension, equals, rest = spec.partition("=")
    value, colon, count_text = rest.rpartition(":")
    if not equals or not colon or not value:
        raise ReckonError(f"{option} {spec!r}: expected DIMENSION=VALUE:COUNT, "
                          "for example outcome=escalate:50")
    if dimension not in DIMENSIONS:
        raise ReckonError(f"{option} {spec!r}: dimension {dimension!r} is not one of "
                          f"{', '.join(DIMENSIONS)}")
    try:
        count = int(count_text)
    except ValueError:
        raise ReckonError(f"{option} {spec!r}: count {count_text!r} is not a whole number") from None
    if count < 1:
        raise ReckonError(f"{option} {spec!r}: count must be at least 1")
    return Limit(dimension, value, count)


@dataclass
class Item:
    key: str                          # unique per example: trace id and decision index
    categories: tuple[str, ...]
    repeat: int = 1


def categories_of(tool: str, outcome: str, rules: tuple[str, ...]) -> tuple[str, ...]:
    return (f"tool={tool}", f"outcome={outcome}", *(f"rule={rule}" for rule in rules))


def count_categories(items: list[Item], weighted: bool = False) -> dict[str, dict[str, int]]:
    """Return {dimension: {value: count}}; weighted counts include repeats."""
    counts: dict[str, Counter] = {dimension: Counter() for dimension in DIMENSIONS}
    for item in items:
        for category in item.categories:
            dimension, _, value = category.partition("=")
            counts[dimension][value] += item.repeat if weighted else 1
    return {dimension: dict(sorted(counter.items())) for dimension, counter in counts.items()}


@dataclass
class BalanceReport:
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    caps: list[dict] = field(default_factory=list)
    floors: list[dict] = field(default_factory=list)
    dropped: int = 0
    repeated_examples: int = 0

    def to_dict(self) -> dict:
        return {"before": self.before, "after": self.after, "caps": self.caps,
                "floors": self.floors, "dropped_by_caps": self.dropped,
                "repeated_examples": self.repeated_examples}


def _order_key(item: Item) -> bytes:
    return hashlib.blake2b(item.key.encode("utf-8"), digest_size=8).digest()


def balance(items: list[Item], floors: list[Limit], caps: list[Limit],
            max_repeat: int = DEFAULT_MAX_REPEAT) -> tuple[list[Item], BalanceReport]:
    """Return the kept items (repeat counts set) in their input order, and the report."""
    report = BalanceReport(before=count_categories(items))
    cap_of = {limit.category: limit.count for limit in caps}

    # Caps: greedy over a hash order, so which examples survive does not favour early tasks.
    filled: Counter = Counter()
    dropped_keys: set[str] = set()
    for item in sorted(items, key=_order_key):
        capped = [category for category in item.categories if category in cap_of]
        if any(filled[category] >= cap_of[category] for category in capped):
            dropped_keys.add(item.key)
            continue
        for category in capped:
            filled[category] += 1
    kept = [item for item in items if item.key not in dropped_keys]
    report.dropped = len(dropped_keys)
    for limit in caps:
        before = report.before[limit.dimension].get(limit.value, 0)
        report.caps.append({"category": limit.category, "cap": limit.count, "before": before,
                            "after": filled[limit.category]})

    # Floors: oversample, keeping every capped category within its cap.
    weighted: Counter = Counter()
    for item in kept:
        for category in item.categories:
            weighted[category] += item.repeat
    for limit in floors:
        members = [item for item in kept if limit.category in item.categories]
        entry = {"category": limit.category, "floor": limit.count, "examples": len(members),
                 "before": weighted[limit.category]}
        if members and weighted[limit.category] < limit.count:
            factor = min(math.ceil(limit.count / len(members)), max_repeat)
            for item in members:
                extra = factor - item.repeat
                for category in item.categories:
                    if category in cap_of:
                        extra = min(extra, cap_of[category] - weighted[category])
                if extra <= 0:
                    continue
                item.repeat += extra
                for category in item.categories:
                    weighted[category] += extra
            entry["repeat"] = factor
        entry["after"] = weighted[limit.category]
        entry["met"] = weighted[limit.category] >= limit.count
        if not entry["met"]:
            entry["why"] = ("no example in this category" if not members else
                            f"limited by max_repeat={max_repeat} or a cap")
        report.floors.append(entry)

    report.repeated_examples = sum(1 for item in kept if item.repeat > 1)
    report.after = count_categories(kept, weighted=True)
    return kept, report
