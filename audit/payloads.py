"""Payload rules for each ledger entry kind.

Each kind lists its required fields; other fields are kept as given, so callers can record
more context (a report digest, a job id) without a schema change. Every payload must also be
representable in RFC 8785 canonical JSON: strings, booleans, null, integers within +-(2**53-1),
finite floats, lists and objects with string keys.
"""

from __future__ import annotations

import math
from typing import Any

from appliance.errors import ReckonError

KINDS = ("eval", "freeze", "key", "cutover")
KEY_ACTIONS = ("created", "retired")
CUTOVER_DECISIONS = ("approved", "rejected", "rolled_back")
MAX_SAFE_INTEGER = 2**53 - 1


class PayloadError(ReckonError):
    """A ledger payload is missing a field or has a field of the wrong type."""

    def __init__(self, kind: str, field: str, problem: str):
        self.kind = kind
        self.field = field
        self.problem = problem
        super().__init__(f"invalid {kind} payload: field {field!r} {problem}")


def validate_payload(kind: str, payload: Any, *, check_values: bool = True) -> None:
    """Raise PayloadError naming the first field that is missing or of the wrong type.

    check_values=False skips the walk that checks every value is representable in RFC 8785;
    callers that canonicalize the payload anyway run `check_json_values` only when that fails.
    """
    if kind not in KINDS:
        raise PayloadError(kind, "kind", f"is not one of {', '.join(KINDS)}")
    if not isinstance(payload, dict):
        raise PayloadError(kind, "(payload)", f"must be a JSON object, got {type(payload).__name__}")
    if check_values:
        check_json_values(kind, payload)
    VALIDATORS[kind](payload)


def check_json_values(kind: str, payload: dict) -> None:
    """Raise PayloadError naming the first value RFC 8785 cannot represent."""
    _check_json_value(kind, "", payload)


def _check_json_value(kind: str, path: str, value: Any) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise PayloadError(kind, path, "is an integer outside +-(2**53-1), which RFC 8785 "
                               "cannot represent exactly; store it as a string")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(kind, path, f"is {value}, which JSON cannot represent")
        return
    if isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _check_json_value(kind, f"{path}[{position}]", item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(kind, f"{path}.{key}" if path else str(key),
                                   "has a non-string key")
            _check_json_value(kind, f"{path}.{key}" if path else key, item)
        return
    raise PayloadError(kind, path, f"has type {type(value).__name__}, which is not JSON")


def _require(kind: str, payload: dict, field: str, types: type | tuple, label: str,
             path: str | None = None) -> Any:
    name = path or field
    if field not in payload:
        raise PayloadError(kind, name, "is missing")
    value = payload[field]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PayloadError(kind, name, f"must be {label}, got a boolean")
    if not isinstance(value, types):
        raise PayloadError(kind, name, f"must be {label}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise PayloadError(kind, name, "must not be empty")
    return value


def metric_interval(metric: dict) -> tuple[Any, Any]:
    """Return a metric's (low, high): from `interval` [low, high], else from `low` and `high`.

    Both forms are accepted because appliance.evaluation's Metric.to_dict writes low/high.
    """
    if "interval" in metric:
        interval = metric["interval"]
        if isinstance(interval, (list, tuple)) and len(interval) == 2:
            return interval[0], interval[1]
        return None, None
    return metric.get("low"), metric.get("high")


def rule_passed(result: dict) -> Any:
    """Return a rule result's passed count, from `passed` or (Metric.to_dict) `successes`."""
    return result["passed"] if "passed" in result else result.get("successes")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_metric(path: str, metric: Any) -> None:
    if not isinstance(metric, dict):
        raise PayloadError("eval", path, "must be an object with value, interval and n")
    n = _require("eval", metric, "n", int, "a count (integer)", f"{path}.n")
    if n < 0:
        raise PayloadError("eval", f"{path}.n", "must not be negative")
    if "value" not in metric:
        raise PayloadError("eval", f"{path}.value", "is missing")
    value = metric["value"]
    if "interval" not in metric and not ("low" in metric and "high" in metric):
        raise PayloadError("eval", f"{path}.interval", "is missing (give interval [low, high], "
                           "or low and high)")
    low, high = metric_interval(metric)

    # A metric over no cases has no value and no interval.
    if value is None and n == 0 and low is None and high is None:
        return
    if not _is_number(value):
        raise PayloadError("eval", f"{path}.value", "must be a number (null only when n is 0)")
    if not math.isfinite(value):
        raise PayloadError("eval", f"{path}.value", f"is {value}, which JSON cannot represent")
    if not (_is_number(low) and _is_number(high)):
        raise PayloadError("eval", f"{path}.interval", "must be a [low, high] pair of numbers")
    if not low <= value <= high:
        raise PayloadError("eval", f"{path}.interval",
                           f"[{low}, {high}] does not contain the value {value}")


def _validate_eval(payload: dict) -> None:
    _require("eval", payload, "version", str, "the version digest (a string)")
    _require("eval", payload, "eval_set", str, "the eval set digest (a string)")
    metrics = _require("eval", payload, "metrics", dict, "an object of metric name -> result")
    if not metrics:
        raise PayloadError("eval", "metrics", "must contain at least one metric")
    for name, metric in metrics.items():
        _validate_metric(f"metrics.{name}", metric)
    rules = _require("eval", payload, "rules", dict, "an object of rule id -> result")
    for rule_id, result in rules.items():
        path = f"rules.{rule_id}"
        if not isinstance(result, dict):
            raise PayloadError("eval", path, "must be an object with passed and n")
        n = _require("eval", result, "n", int, "a count (integer)", f"{path}.n")
        field = "passed" if "passed" in result or "successes" not in result else "successes"
        passed = _require("eval", result, field, int, "a count (integer)", f"{path}.{field}")
        if not 0 <= passed <= n:
            raise PayloadError("eval", f"{path}.{field}", f"is {passed}, outside 0..n ({n})")
    _require("eval", payload, "runtime", dict, "an object (runtime kind, model, settings)")
    _require("eval", payload, "decoding", dict, "an object (temperature, top_p, max_tokens, seed)")


def _validate_freeze(payload: dict) -> None:
    _require("freeze", payload, "version", str, "the version digest (a string)")
    _require("freeze", payload, "bundle", str, "the bundle id or file name (a string)")


def _validate_key(payload: dict) -> None:
    action = _require("key", payload, "action", str, "a string")
    if action not in KEY_ACTIONS:
        raise PayloadError("key", "action", f"is {action!r}; use one of {', '.join(KEY_ACTIONS)}")
    _require("key", payload, "key_id", str, "the key id or fingerprint (a string)")
    _require("key", payload, "purpose", str, "a string such as 'bundle-signing'")


def _validate_cutover(payload: dict) -> None:
    _require("cutover", payload, "version", str, "the version digest going live (a string)")
    decision = _require("cutover", payload, "decision", str, "a string")
    if decision not in CUTOVER_DECISIONS:
        raise PayloadError("cutover", "decision",
                           f"is {decision!r}; use one of {', '.join(CUTOVER_DECISIONS)}")
    _require("cutover", payload, "reason", str, "a string")
    evals = _require("cutover", payload, "evals", (list, tuple),
                     "a list of ledger indexes of the eval entries behind the decision")
    for position, index in enumerate(evals):
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise PayloadError("cutover", f"evals[{position}]", "must be a ledger index (integer >= 0)")


VALIDATORS = {
    "eval": _validate_eval,
    "freeze": _validate_freeze,
    "key": _validate_key,
    "cutover": _validate_cutover,
}
