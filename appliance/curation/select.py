"""Rejection sampling: pick among the verified samples of one task.

When a run drew K samples per task, the verified ones compete. The shortest correct trace
goes first (fewest assistant actions, then fewest characters the model wrote, then trace
id for a stable tie-break). Further picks, up to `per_task`, must differ from every trace
already picked in their sequence of actions (tool names and normalised arguments, or the
normalised answer text). Among those, the one that shares the fewest actions with the
picks so far wins, so a second pick adds phrasing or arguments the first did not have.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Candidate:
    trace_id: str
    actions: int                  # number of assistant messages
    characters: int               # characters the model wrote (content plus arguments)
    signature: tuple[bytes, ...]  # normalised action keys, in order


def select(candidates: list[Candidate], per_task: int) -> list[Candidate]:
    if per_task < 1 or not candidates:
        return []
    ordered = sorted(candidates, key=lambda c: (c.actions, c.characters, c.trace_id))
    picked = [ordered[0]]
    seen_signatures = {ordered[0].signature}
    seen_actions = set(ordered[0].signature)
    remaining = [c for c in ordered[1:] if c.signature not in seen_signatures]
    while remaining and len(picked) < per_task:
        best = min(remaining, key=lambda c: (sum(key in seen_actions for key in c.signature),
                                             c.actions, c.characters, c.trace_id))
        picked.append(best)
        seen_signatures.add(best.signature)
        seen_actions.update(best.signature)
        remaining = [c for c in remaining if c.signature not in seen_signatures]
    return picked
