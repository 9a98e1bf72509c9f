"""Eval results, their metrics with 95 % Wilson intervals, and the failure taxonomy.

An eval result (what the runner writes and `compare` reads) is a dict, or an EvalResult:

    {
      "schema": "reckon-eval-result/1",
      "id": "eval-20261204T201500-3f9a1c",          # optional
      "evalset": {"digest": "sha256:...", "name": "heldout"},
      "model": {...},        # model identity: runtime, model path or name, weights digest,
                             # adapter digest, bundle id
      "settings": {...},     # renderer, tool listing style, prompt, sampling, step limit
      "created_at": 1733342100.0,                   # optional, seconds since the epoch
      "cases": [CaseResult.to_dict(), ...]
    }

Each case record is `checker.CaseResult.to_dict()`: case_id, passed, failure (one of
checker.FAILURE_CATEGORIES or null), message, expected_outcome, observed_outcome,
category, calls (per-call details with per-argument verdicts), tool_names_correct,
calls_correct, format_error, multi_step, rules, rule_verdicts ({rule_id: {"passed":
bool|null, "reason"}}; "task" is the pack's task checker), prompt_tokens,
completion_tokens (over all steps of the case), evalset_digest and output.

Metrics (`summarize`), each a proportion with its n and 95 % Wilson interval:

    accuracy             all cases: the case passed
    tool_name_accuracy   cases that expect calls: the called tool names are the expected
                         ones (as a multiset for parallel calls, in order for multi-step)
    exact_call_accuracy  cases that expect calls: every call matches, arguments included
    argument_accuracy    cases whose tool names are right: every argument matches
    refusal_accuracy     cases expecting refuse, escalate or silent (BFCL irrelevance too)
    task_success         multi-step cases: the calls match and the pack's task verdict,
                         when given, is not a fail
    format_error_rate    all cases: some output could not be parsed (lower is better)
    rule:<id>            cases where the rule applies (verdict passed is not null)
    category:<name>      cases of the category: the case passed

Tokens per task (prompt + completion over all steps) are reported as mean and total over
the cases that carry token counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from appliance.errors import ReckonError
from appliance.evaluation.checker import FAILURE_CATEGORIES, CaseResult

RESULT_SCHEMA = "reckon-eval-result/1"

# The two-sided 95 % normal quantile, Phi^-1(0.975).
Z_95 = 1.959963984540054

# Metric names in report order, each mapped to True when a higher value is better.
MAIN_METRICS: dict[str, bool] = {
    "accuracy": True,
    "tool_name_accuracy": True,
    "exact_call_accuracy": True,
    "argument_accuracy": True,
    "refusal_accuracy": True,
    "task_success": True,
    "format_error_rate": False,
}


class ResultError(ReckonError):
    """An eval result dict is not in the documented schema."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Return the Wilson score interval (low, high) for successes out of n, or None for n=0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"invalid proportion {successes}/{n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # At p = 0 and p = 1 the bound is exactly 0 or 1; rounding would leave 1e-17 off.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return low, high


@dataclass
class Metric:
    """A proportion: successes out of n, with its 95 % Wilson interval."""

    name: str
    successes: int = 0
    n: int = 0
    higher_is_better: bool = True

    def add(self, success: bool) -> None:
        self.n += 1
        self.successes += 1 if success else 0

    @property
    def value(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.successes, self.n)

    def to_dict(self) -> dict:
        interval = self.interval
        return {"name": self.name, "successes": self.successes, "n": self.n,
                "value": self.value, "low": interval[0] if interval else None,
                "high": interval[1] if interval else None,
                "higher_is_better": self.higher_is_better}


@dataclass
class EvalResult:
    """One evaluation: the eval set it ran on, the model and settings, per-case results."""

    evalset_digest: str
    model: dict
    settings: dict
    cases: list[CaseResult]
    id: str | None = None
    evalset_name: str | None = None
    created_at: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": RESULT_SCHEMA, "id": self.id,
                "evalset": {"digest": self.evalset_digest, "name": self.evalset_name},
                "model": self.model, "settings": self.settings, "created_at": self.created_at,
                "cases": [case.to_dict() for case in self.cases], **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvalResult":
        if not isinstance(data, Mapping):
            raise ResultError(f"an eval result must be an object, got {type(data).__name__}")
        evalset = data.get("evalset")
        if not isinstance(evalset, Mapping) or not isinstance(evalset.get("digest"), str):
            raise ResultError("eval result: evalset.digest is missing; every result must name "
                              "the frozen eval set it ran on")
        cases = data.get("cases")
        if not isinstance(cases, list):
            raise ResultError("eval result: cases is missing or not a list")
        parsed = []
        for index, case in enumerate(cases):
            if not isinstance(case, Mapping) or "case_id" not in case or "passed" not in case:
                raise ResultError(f"eval result: cases[{index}] needs case_id and passed")
            record = CaseResult.from_dict(case)
            if record.evalset_digest not in (None, evalset["digest"]):
                raise ResultError(f"eval result: case {record.case_id!r} ran on eval set "
                                  f"{record.evalset_digest}, the result names {evalset['digest']}")
            parsed.append(record)
        known = {"schema", "id", "evalset", "model", "settings", "created_at", "cases"}
        return cls(evalset_digest=evalset["digest"], evalset_name=evalset.get("name"),
                   model=dict(data.get("model") or {}), settings=dict(data.get("settings") or {}),
                   cases=parsed, id=data.get("id"), created_at=data.get("created_at"),
                   extra={key: value for key, value in data.items() if key not in known})

    def summary(self) -> dict:
        return summarize(self.cases)


def as_result(value: Any) -> EvalResult:
    if isinstance(value, EvalResult):
        return value
    return EvalResult.from_dict(value)


def as_case_results(records: Iterable[Any]) -> list[CaseResult]:
    return [record if isinstance(record, CaseResult) else CaseResult.from_dict(record)
            for record in records]


def _expects_calls(case: CaseResult) -> bool:
    return case.tool_names_correct is not None


def summarize(records: Iterable[CaseResult | Mapping]) -> dict:
    """Aggregate case results into metrics, per-category and per-rule accuracy, failures, tokens."""
    cases = as_case_results(records)
    metrics = {name: Metric(name, higher_is_better=higher) for name, higher in MAIN_METRICS.items()}
    categories: dict[str, Metric] = {}
    rules: dict[str, Metric] = {}
    failures = {category: 0 for category in FAILURE_CATEGORIES}
    token_counts: list[int] = []
    prompt_total = 0
    completion_total = 0

    for case in cases:
        metrics["accuracy"].add(case.passed)
        metrics["format_error_rate"].add(case.format_error)
        if _expects_calls(case):
            metrics["tool_name_accuracy"].add(bool(case.tool_names_correct))
            metrics["exact_call_accuracy"].add(bool(case.calls_correct))
            if case.tool_names_correct:
                metrics["argument_accuracy"].add(bool(case.calls_correct))
        if case.expected_outcome in ("refuse", "escalate", "silent"):
            metrics["refusal_accuracy"].add(case.passed)
        if case.multi_step:
            metrics["task_success"].add(case.passed and case.task_passed is not False)

        category = case.category or "(none)"
        categories.setdefault(category, Metric(f"category:{category}")).add(case.passed)
        for rule_id, verdict in sorted(case.rule_verdicts.items()):
            if rule_id == "task":
                continue
            passed = verdict.get("passed") if isinstance(verdict, Mapping) else verdict
            if passed is None:
                continue
            rules.setdefault(rule_id, Metric(f"rule:{rule_id}")).add(bool(passed))

        if not case.passed and case.failure:
            failures[case.failure] = failures.get(case.failure, 0) + 1
        if case.total_tokens is not None:
            token_counts.append(case.total_tokens)
            prompt_total += case.prompt_tokens or 0
            completion_total += case.completion_tokens or 0

    total = sum(token_counts)
    return {
        "n_cases": len(cases),
        "metrics": {name: metric.to_dict() for name, metric in metrics.items()},
        "categories": {name: categories[name].to_dict() for name in sorted(categories)},
        "rules": {name: rules[name].to_dict() for name in sorted(rules)},
        "failures": failures,
        "tokens": {"n": len(token_counts), "total": total,
                   "mean": total / len(token_counts) if token_counts else None,
                   "prompt_total": prompt_total, "completion_total": completion_total},
    }


def metric_lookup(summary: Mapping, key: str) -> dict | None:
    """Find a metric in a summary by key: a main metric name, "rule:<id>" or "category:<name>"."""
    if key.startswith("rule:"):
        return summary["rules"].get(key[len("rule:"):])
    if key.startswith("category:"):
        return summary["categories"].get(key[len("category:"):])
    return summary["metrics"].get(key)


def metric_keys(summaries: Sequence[Mapping]) -> list[str]:
    """Return every metric key present in any of the summaries, in report order."""
    keys = list(MAIN_METRICS)
    for prefix, section in (("category:", "categories"), ("rule:", "rules")):
        names = sorted({name for summary in summaries for name in summary[section]})
        keys.extend(prefix + name for name in names)
    return keys
