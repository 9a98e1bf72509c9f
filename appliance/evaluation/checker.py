"""A function-call checker that gives the verdicts of BFCL's AST checker, plus outcome checks.

The argument rules follow the Berkeley Function-Calling Leaderboard (BFCL) AST checker
(gorilla repo, berkeley-function-call-leaderboard/bfcl_eval/eval_checker/ast_eval/
ast_checker.py, Python language path), re-implemented here:

- The called name must equal the expected name. With `underscore_names`, a dotted name such
  as "math.factorial" is expected as "math_factorial", as BFCL does for models whose API
  forbids dots in function names.
- Every argument the function doc lists as required must be present.
- An argument absent from the function doc, or absent from the expected answer, is
  unexpected.
- Types use BFCL's Python mapping (string, integer, float, boolean, array, tuple, dict, any)
  and the JSON Schema names that pack tools use (number, object, null). An int is accepted
  for a float; a float is never accepted for an int; bool is not an int. A value whose
  type matches the expected answer's type instead of the doc's type is treated as a
  "variable" and compared without normalisation.
- Arrays get one level of item type checking.
- Strings compare after normalisation: lower case, with spaces and the characters
  , . / - _ * ^ removed, and single quotes read as double quotes. Lists compare in order,
  element by element with the same string normalisation. Dicts compare key by key against
  the allowed values of each key.
- The possible value "" marks an optional argument, which may be omitted. An argument of
  the expected answer that is omitted without "" among its values is missing.
- Parallel calls are matched order-free, greedily: each expected call takes the first
  unmatched model call that passes it. The number of calls must match.
- A case without expected calls that expects a refusal (BFCL's irrelevance category)
  passes when the model makes no call; output that cannot be parsed counts as no call.

Appliance extensions: the possible value "$any" accepts any value of the right type (for
free text such as a final answer), `expected_calls` is an ordered multi-step sequence
matched position by position, and `expected_outcome` (answer, refuse, escalate, silent)
is checked against the observed outcome.

Every failure gets one category from FAILURE_CATEGORIES. When a call has several errors,
the category is the first one BFCL's order reaches: name, required arguments, then each
given argument in the model's order (unexpected, type, value), then omitted arguments
that the expected answer requires.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from appliance.chat import ToolCall
from appliance.errors import ReckonError
from appliance.evaluation.evalset import EvalCase

log = logging.getLogger(__name__)

WRONG_TOOL = "wrong_tool"
MISSING_REQUIRED = "missing_required"
UNEXPECTED_ARGUMENT = "unexpected_argument"
TYPE_ERROR = "type_error"
VALUE_ERROR = "value_error"
UNPARSEABLE_OUTPUT = "unparseable_output"
WRONG_REFUSAL = "wrong_refusal"
MISSED_REFUSAL = "missed_refusal"
STEP_LIMIT = "step_limit"

FAILURE_CATEGORIES = (
    WRONG_TOOL, MISSING_REQUIRED, UNEXPECTED_ARGUMENT, TYPE_ERROR, VALUE_ERROR,
    UNPARSEABLE_OUTPUT, WRONG_REFUSAL, MISSED_REFUSAL, STEP_LIMIT,
)

# Expected outcomes of a case; "unparseable" and "step_limit" can only be observed.
OUTCOMES = ("answer", "refuse", "escalate", "silent")
DECLINING_OUTCOMES = ("refuse", "escalate", "silent")

OPTIONAL = ""
ANY_VALUE = "$any"

# BFCL's Python type mapping ("any" maps to str there), extended with JSON Schema names.
TYPE_MAPPING: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,
    "null": type(None),
}
NESTED_TYPES = ("array", "tuple")
FLOAT_TYPES = ("float", "number")

_STRIPPED = re.compile(r"[ ,./\-_*^]")


class CheckerError(ReckonError):
    """A case cannot be checked, e.g. it expects a function that no function doc describes."""


def standardize_string(text: str) -> str:
    """Normalise a string as BFCL does before comparing: see the module docstring."""
    return _STRIPPED.sub("", text).lower().replace("'", '"')


# -- results -------------------------------------------------------------------------------


@dataclass
class ArgumentCheck:
    """The verdict on one argument of one call."""

    name: str
    passed: bool
    failure: str | None = None
    message: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "failure": self.failure,
                "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ArgumentCheck":
        return cls(name=data["name"], passed=bool(data["passed"]),
                   failure=data.get("failure"), message=data.get("message", ""))


@dataclass
class CallCheck:
    """The verdict on one expected call against the model call matched to it.

    `index` is the position of the model call (None when no model call was left to try),
    `expected` and `actual` are the function names.
    """

    expected: str | None
    actual: str | None
    index: int | None
    passed: bool
    failure: str | None = None
    message: str = ""
    arguments: list[ArgumentCheck] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"expected": self.expected, "actual": self.actual, "index": self.index,
                "passed": self.passed, "failure": self.failure, "message": self.message,
                "arguments": [argument.to_dict() for argument in self.arguments]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "CallCheck":
        return cls(expected=data.get("expected"), actual=data.get("actual"),
                   index=data.get("index"), passed=bool(data["passed"]),
                   failure=data.get("failure"), message=data.get("message", ""),
                   arguments=[ArgumentCheck.from_dict(item) for item in data.get("arguments", [])])


@dataclass
class ModelOutput:
    """What a model produced for one case, as the checker reads it.

    calls: every tool call in order, over all steps of a multi-step run.
    error: why the (last) output could not be parsed, else None.
    outcome: the runner's own reading of how the run ended (answer, refuse, escalate,
        silent, step_limit), which takes precedence over the checker's inference.
    """

    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    content: str | None = None
    outcome: str | None = None

    def to_dict(self) -> dict:
        return {"calls": [{"name": call.name, "arguments": call.arguments} for call in self.calls],
                "error": self.error, "content": self.content, "outcome": self.outcome}


@dataclass
class CaseResult:
    """The checker's verdict on one eval case, plus what the runner adds.

    tool_names_correct and calls_correct are None for cases that expect no calls.
    format_error is True when any model output of the case could not be parsed, whether
    or not the case passed. rule_verdicts ({rule_id: {"passed": bool|None, "reason": str}},
    "task" for the pack's task checker) and the token counts are supplied by the runner.
    """

    case_id: str
    passed: bool
    failure: str | None
    message: str
    expected_outcome: str
    observed_outcome: str
    category: str | None = None
    calls: list[CallCheck] = field(default_factory=list)
    tool_names_correct: bool | None = None
    calls_correct: bool | None = None
    format_error: bool = False
    multi_step: bool = False
    rules: list[str] = field(default_factory=list)
    rule_verdicts: dict[str, dict] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    evalset_digest: str | None = None
    output: dict = field(default_factory=dict)

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    @property
    def task_passed(self) -> bool | None:
        """The pack's task verdict when the runner supplied one, else None."""
        verdict = self.rule_verdicts.get("task")
        return None if verdict is None else verdict.get("passed")

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id, "passed": self.passed, "failure": self.failure,
            "message": self.message, "expected_outcome": self.expected_outcome,
            "observed_outcome": self.observed_outcome, "category": self.category,
            "calls": [check.to_dict() for check in self.calls],
            "tool_names_correct": self.tool_names_correct, "calls_correct": self.calls_correct,
            "format_error": self.format_error, "multi_step": self.multi_step,
            "rules": list(self.rules), "rule_verdicts": dict(self.rule_verdicts),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "evalset_digest": self.evalset_digest, "output": self.output,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "CaseResult":
        return cls(
            case_id=str(data["case_id"]), passed=bool(data["passed"]),
            failure=data.get("failure"), message=data.get("message", ""),
            expected_outcome=data.get("expected_outcome", "answer"),
            observed_outcome=data.get("observed_outcome", ""),
            category=data.get("category"),
            calls=[CallCheck.from_dict(item) for item in data.get("calls", [])],
            tool_names_correct=data.get("tool_names_correct"),
            calls_correct=data.get("calls_correct"),
            format_error=bool(data.get("format_error", False)),
            multi_step=bool(data.get("multi_step", False)),
            rules=list(data.get("rules", [])),
            rule_verdicts=dict(data.get("rule_verdicts") or {}),
            prompt_tokens=data.get("prompt_tokens"),
            completion_tokens=data.get("completion_tokens"),
            evalset_digest=data.get("evalset_digest"),
            output=dict(data.get("output") or {}),
        )


@dataclass(frozen=True)
class CheckOptions:
    """Settings of one checking run.

    underscore_names: expect dotted function names with dots replaced by underscores.
    refusal_tools / escalation_tools: tool names whose call means the model refused or
        escalated, taken from a pack's terminal tools. With none given, only "no call"
        reads as a refusal.
    """

    underscore_names: bool = False
    refusal_tools: frozenset[str] = frozenset()
    escalation_tools: frozenset[str] = frozenset()

    def expected_name(self, name: str) -> str:
        return name.replace(".", "_") if self.underscore_names else name


# -- function docs -------------------------------------------------------------------------


def function_docs(functions: Any) -> dict[str, dict]:
    """Index function docs by name.

    Accepts BFCL function docs ({"name", "parameters"}), OpenAI tools ({"type": "function",
    "function": {...}}), a mapping of name to either, or objects with `name` and
    `parameters` attributes such as a pack's tools.
    """
    if functions is None:
        return {}
    if isinstance(functions, Mapping):
        items: Iterable[Any] = functions.values()
    else:
        items = functions
    docs: dict[str, dict] = {}
    for item in items:
        if isinstance(item, Mapping):
            doc = item.get("function", item) if item.get("type") == "function" else item
            name = doc.get("name")
            parameters = doc.get("parameters") or {}
        else:
            name = getattr(item, "name", None)
            parameters = getattr(item, "parameters", None) or {}
        if not isinstance(name, str):
            raise CheckerError(f"function doc without a string name: {item!r}")
        docs[name] = {"name": name, "parameters": parameters}
    return docs


def _doc_for(docs: dict[str, dict], name: str, case_id: str) -> dict:
    doc = docs.get(name)
    if doc is None:
        known = ", ".join(sorted(docs)) or "none"
        raise CheckerError(f"case {case_id!r} expects function {name!r}, which no function doc "
                           f"describes (known: {known}); add it to the case's 'function' list "
                           "or pass the pack's tools")
    return doc


# -- type and value rules ------------------------------------------------------------------


def _answer_type(possible: Sequence) -> type | None:
    """Return the type of the first concrete possible value ("" and "$any" carry no type)."""
    for value in possible:
        if isinstance(value, str) and value in (OPTIONAL, ANY_VALUE):
            continue
        return type(value)
    return None


@dataclass
class _TypeVerdict:
    valid: bool
    is_variable: bool = False
    message: str = ""


def _check_type(name: str, value: Any, possible: Sequence, type_name: str,
                item_type_name: str | None) -> _TypeVerdict:
    expected = TYPE_MAPPING[type_name]
    nested = TYPE_MAPPING.get(item_type_name) if (type_name in NESTED_TYPES
                                                  and item_type_name in TYPE_MAPPING) else None
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type is not expected

    if type(value) is expected:
        if nested is None:
            return _TypeVerdict(True, is_variable)
        # One level of item checking: the items must fit the item type (or the type of the
        # matching expected list's items) for at least one possible value.
        for candidate in possible:
            fits = True
            if type(candidate) is list:
                for element in value:
                    if not _check_type(name, element, candidate, item_type_name, None).valid:
                        fits = False
                        break
            if fits:
                return _TypeVerdict(True, is_variable)
        return _TypeVerdict(False, message=(
            f"argument {name!r}: items of {value!r} are not all of type {item_type_name}"))

    if answer_type is not None and type(value) is answer_type:
        return _TypeVerdict(True, is_variable=True)
    return _TypeVerdict(False, message=(
        f"argument {name!r}: expected type {type_name}, got {type(value).__name__} ({value!r})"))


def _standardized(values: Iterable) -> list:
    return [standardize_string(value) if type(value) is str else value for value in values]


def _dict_matches(value: dict, possible: Sequence) -> tuple[bool, str]:
    message = f"dict {value!r} matches none of the allowed values"
    for answer in possible:
        if answer == OPTIONAL:
            continue
        if answer == ANY_VALUE:
            return True, ""
        if not isinstance(answer, dict):
            continue
        matched = True
        for key, item in value.items():
            if key not in answer:
                message = f"unexpected dict key {key!r}"
                matched = False
                break
            allowed = answer[key] if isinstance(answer[key], list) else [answer[key]]
            if ANY_VALUE in allowed:
                continue
            normalized = standardize_string(item) if type(item) is str else item
            if normalized not in _standardized(allowed):
                message = f"dict key {key!r}: {item!r} is not one of {allowed!r}"
                matched = False
                break
        if matched:
            for key, allowed in answer.items():
                if key not in value and OPTIONAL not in allowed:
                    message = f"missing dict key {key!r}"
                    matched = False
                    break
        if matched:
            return True, ""
    return False, message


def _list_matches(value: list, possible: Sequence) -> bool:
    normalized = _standardized(value)
    for answer in possible:
        if answer == ANY_VALUE:
            return True
        # "" (optional) reads as the empty list here, as in BFCL.
        if isinstance(answer, (list, str)) and normalized == _standardized(list(answer)):
            return True
    return False


def _list_of_dicts_matches(value: list, possible: Sequence) -> tuple[bool, str]:
    message = f"list {value!r} matches none of the allowed values"
    for answer in possible:
        if answer == ANY_VALUE:
            return True, ""
        if not isinstance(answer, (list, str)) or len(value) != len(answer):
            message = "wrong number of dicts in the list"
            continue
        matched = True
        for element, expected in zip(value, answer):
            if not isinstance(element, dict):
                matched, message = False, f"list item {element!r} is not a dict"
                break
            ok, message = _dict_matches(element, [expected])
            if not ok:
                matched = False
                break
        if matched:
            return True, ""
    return False, message


def _check_value(name: str, value: Any, possible: Sequence, kind: type | None,
                 item_kind: type | None, is_variable: bool) -> str | None:
    """Return why `value` is not allowed, or None when it is."""
    if ANY_VALUE in [item for item in possible if isinstance(item, str)]:
        return None
    if not is_variable:
        if kind is dict:
            ok, message = _dict_matches(value, possible)
            return None if ok else f"argument {name!r}: {message}"
        if kind is list and item_kind is dict:
            ok, message = _list_of_dicts_matches(value, possible)
            return None if ok else f"argument {name!r}: {message}"
        if kind is str:
            allowed = [standardize_string(item) for item in possible if type(item) is str]
            if standardize_string(value) in allowed:
                return None
            return f"argument {name!r}: {value!r} is not one of {list(possible)!r} (case-insensitive)"
        if kind is list:
            if _list_matches(value, possible):
                return None
            return f"argument {name!r}: {value!r} is not one of {list(possible)!r}"
    if value in possible:
        return None
    return f"argument {name!r}: {value!r} is not one of {list(possible)!r}"


def _type_names(schema: Mapping) -> list[str] | None:
    """Return the declared type names of a parameter schema, or None when it declares none."""
    declared = schema.get("type")
    if declared is None:
        return None
    names = declared if isinstance(declared, list) else [declared]
    known = [name for name in names if name in TYPE_MAPPING]
    if not known:
        # NOTE: an unknown type name skips the type check rather than failing every call.
        log.debug("parameter schema with unknown type %r: type not checked", declared)
        return None
    return known


def check_argument(name: str, value: Any, schema: Mapping, possible: Sequence) -> ArgumentCheck:
    """Check one given argument against its parameter schema and its possible values."""
    type_names = _type_names(schema)
    if type_names is None:
        kind = type(value) if type(value) in (dict, list, str) else None
        error = _check_value(name, value, possible, kind, None, is_variable=False)
        return _argument_verdict(name, error)

    type_error = ""
    for type_name in type_names:
        checked = value
        if type_name in FLOAT_TYPES and type(value) is int:
            try:
                checked = float(value)
            except OverflowError:
                checked = value
        item_schema = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        item_type = item_schema.get("type") if isinstance(item_schema.get("type"), str) else None
        verdict = _check_type(name, checked, possible, type_name, item_type)
        if not verdict.valid:
            type_error = type_error or verdict.message
            continue
        item_kind = TYPE_MAPPING.get(item_type) if type_name in NESTED_TYPES else None
        error = _check_value(name, checked, possible, TYPE_MAPPING[type_name], item_kind,
                             verdict.is_variable)
        return _argument_verdict(name, error)
    return ArgumentCheck(name, False, TYPE_ERROR, type_error)


def _argument_verdict(name: str, error: str | None) -> ArgumentCheck:
    if error is None:
        return ArgumentCheck(name, True)
    return ArgumentCheck(name, False, VALUE_ERROR, error)


# -- calls ---------------------------------------------------------------------------------


def _expected_entry(entry: Mapping) -> tuple[str, dict]:
    ((name, arguments),) = entry.items()
    return name, arguments


def check_call(doc: Mapping, call: ToolCall, entry: Mapping, options: CheckOptions = CheckOptions(),
               index: int | None = None) -> CallCheck:
    """Check one model call against one expected call ({name: {argument: [values]}}).

    Every argument is checked so that the details are complete; the call's failure
    category is the first one in BFCL's order.
    """
    expected_name, possible_values = _expected_entry(entry)
    expected_call_name = options.expected_name(expected_name)
    if call.name != expected_call_name:
        return CallCheck(expected_name, call.name, index, False, WRONG_TOOL,
                         f"called {call.name!r}, expected {expected_call_name!r}")

    parameters = doc.get("parameters") or {}
    properties = parameters.get("properties") or {}
    required = parameters.get("required") or []
    arguments = call.arguments
    checks: list[ArgumentCheck] = []

    for name in required:
        if name not in arguments:
            checks.append(ArgumentCheck(name, False, MISSING_REQUIRED,
                                        f"missing required argument {name!r}"))

    for name, value in arguments.items():
        if name not in properties or name not in possible_values:
            where = "the function doc" if name not in properties else "the expected answer"
            checks.append(ArgumentCheck(name, False, UNEXPECTED_ARGUMENT,
                                        f"unexpected argument {name!r} (not in {where})"))
            continue
        checks.append(check_argument(name, value, properties[name], possible_values[name]))

    reported = {check.name for check in checks}
    for name, possible in possible_values.items():
        if name not in arguments and name not in reported and OPTIONAL not in possible:
            checks.append(ArgumentCheck(name, False, MISSING_REQUIRED,
                                        f"argument {name!r} is omitted but the expected answer "
                                        "does not mark it optional"))

    first_failure = next((check for check in checks if not check.passed), None)
    if first_failure is None:
        return CallCheck(expected_name, call.name, index, True, arguments=checks)
    return CallCheck(expected_name, call.name, index, False, first_failure.failure,
                     first_failure.message, arguments=checks)


def match_unordered(docs: dict[str, dict], calls: Sequence[ToolCall], expected: Sequence[Mapping],
                    options: CheckOptions = CheckOptions(), case_id: str = "") -> tuple[bool, list[CallCheck]]:
    """Match parallel calls order-free, greedily as BFCL does; return (passed, details).

    NOTE: greedy matching can reject an output that a full bipartite matching would
    accept (an early expected call takes a model call a later one needed). BFCL scores
    it that way, so this does too.
    """
    passed = len(calls) == len(expected)
    matched: set[int] = set()
    details: list[CallCheck] = []
    for entry in expected:
        name, _ = _expected_entry(entry)
        doc = _doc_for(docs, name, case_id)
        failures: list[CallCheck] = []
        found = None
        for index, call in enumerate(calls):
            if index in matched:
                continue
            check = check_call(doc, call, entry, options, index)
            if check.passed:
                found = check
                break
            failures.append(check)
        if found is not None:
            matched.add(found.index)
            details.append(found)
            continue
        passed = False
        details.append(_closest_failure(name, failures))
    for index, call in enumerate(calls):
        if index not in matched and not any(check.index == index for check in details):
            details.append(CallCheck(None, call.name, index, False, WRONG_TOOL,
                                     f"call {index} ({call.name!r}) matches no expected call"))
    return passed, details


def _closest_failure(expected_name: str, failures: list[CallCheck]) -> CallCheck:
    """Pick the failed attempt to report: the first one that got the function name right."""
    same_name = [check for check in failures if check.failure != WRONG_TOOL]
    if same_name:
        return same_name[0]
    if failures:
        names = ", ".join(repr(check.actual) for check in failures)
        return CallCheck(expected_name, failures[0].actual, failures[0].index, False, WRONG_TOOL,
                         f"no call to {expected_name!r}; the model called {names}")
    return CallCheck(expected_name, None, None, False, WRONG_TOOL,
                     f"no model call left for expected call {expected_name!r}")


def match_ordered(docs: dict[str, dict], calls: Sequence[ToolCall], expected: Sequence[Mapping],
                  options: CheckOptions = CheckOptions(), case_id: str = "") -> tuple[bool, list[CallCheck]]:
    """Match a multi-step call sequence position by position; return (passed, details)."""
    details: list[CallCheck] = []
    for position, entry in enumerate(expected):
        name, _ = _expected_entry(entry)
        doc = _doc_for(docs, name, case_id)
        if position >= len(calls):
            details.append(CallCheck(name, None, None, False, WRONG_TOOL,
                                     f"step {position}: expected a call to {name!r}, the model "
                                     f"stopped after {len(calls)} call(s)"))
            continue
        details.append(check_call(doc, calls[position], entry, options, position))
    for position in range(len(expected), len(calls)):
        details.append(CallCheck(None, calls[position].name, position, False, WRONG_TOOL,
                                 f"step {position}: unexpected extra call {calls[position].name!r}"))
    passed = len(calls) == len(expected) and all(check.passed for check in details)
    return passed, details


# -- cases ---------------------------------------------------------------------------------


def as_model_output(output: Any) -> ModelOutput:
    """Accept a ModelOutput, a list of ToolCall, formats.ParsedOutput or a parse error string."""
    if isinstance(output, ModelOutput):
        return output
    if isinstance(output, str):
        return ModelOutput(error=output)
    if isinstance(output, (list, tuple)):
        calls = list(output)
        for call in calls:
            if not isinstance(call, ToolCall):
                raise TypeError(f"expected ToolCall items, got {type(call).__name__}")
        return ModelOutput(calls=calls)
    if hasattr(output, "tool_calls") and hasattr(output, "error"):
        return ModelOutput(calls=list(output.tool_calls), error=output.error,
                           content=getattr(output, "content", None))
    raise TypeError(f"cannot read a model output from {type(output).__name__}")


def observed_outcome(output: ModelOutput, options: CheckOptions = CheckOptions()) -> str:
    """Classify how the model ended: answer, refuse, escalate, silent, unparseable or step_limit."""
    if output.outcome:
        return output.outcome
    for call in reversed(output.calls):
        if call.name in options.escalation_tools:
            return "escalate"
        if call.name in options.refusal_tools:
            return "refuse"
    if output.calls:
        return "answer"
    return "unparseable" if output.error else "silent"


def _names_correct(calls: Sequence[ToolCall], expected: Sequence[Mapping], ordered: bool,
                   options: CheckOptions) -> bool:
    expected_names = [options.expected_name(_expected_entry(entry)[0]) for entry in expected]
    called_names = [call.name for call in calls]
    if ordered:
        return called_names == expected_names
    return sorted(called_names) == sorted(expected_names)


def check_case(case: EvalCase | Mapping, output: Any, *, functions: Any = None,
               options: CheckOptions = CheckOptions(), rule_verdicts: Mapping | None = None,
               prompt_tokens: int | None = None, completion_tokens: int | None = None) -> CaseResult:
    """Check a model's output for one eval case and return its CaseResult.

    case: an evalset.EvalCase (or a dict in the eval-set line format).
    output: a ModelOutput, a list of ToolCall, a formats.ParsedOutput, or a parse error
        message (str) for output that could not be parsed.
    functions: the function docs when the case omits `function` (a pack's tools).
    """
    if not isinstance(case, EvalCase):
        case = EvalCase.from_dict(case)
    model_output = as_model_output(output)
    docs = function_docs(case.function if case.function is not None else functions)
    result = CaseResult(
        case_id=case.id, passed=False, failure=None, message="",
        expected_outcome=case.expected_outcome, observed_outcome=observed_outcome(model_output, options),
        category=case.category, format_error=model_output.error is not None,
        multi_step=case.multi_step, rules=list(case.rules),
        rule_verdicts=dict(rule_verdicts or {}), prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens, evalset_digest=case.evalset_digest,
        output=model_output.to_dict(),
    )
    _judge(case, model_output, docs, options, result)
    if not result.passed:
        log.debug("case %s failed: %s: %s", case.id, result.failure, result.message)
    return result


def _judge(case: EvalCase, output: ModelOutput, docs: dict[str, dict], options: CheckOptions,
           result: CaseResult) -> None:
    expected_calls = case.expected_calls or case.ground_truth
    ordered = case.expected_calls is not None
    observed = result.observed_outcome
    expected = case.expected_outcome

    # The call checks run whenever calls are expected, so that tool-name and argument
    # accuracy are measured even when the outcome already fails the case.
    calls_passed = None
    if expected_calls:
        matcher = match_ordered if ordered else match_unordered
        calls_passed, result.calls = matcher(docs, output.calls, expected_calls, options, case.id)
        result.tool_names_correct = _names_correct(output.calls, expected_calls, ordered, options)
        result.calls_correct = calls_passed

    def fail(category: str, message: str) -> None:
        result.passed = False
        result.failure = category
        result.message = message

    if observed == "step_limit":
        return fail(STEP_LIMIT, "the run reached its step limit before the model finished")

    if expected != "answer" and calls_passed and output.error is None:
        # The expected calls spell out the refusal or escalation (e.g. a call to the pack's
        # refuse tool), so they decide even when the options do not name that tool.
        result.passed = True
        return None

    if expected == "refuse" and observed in ("refuse", "silent", "unparseable"):
        # BFCL's irrelevance rule: no call, or output that does not parse, is a refusal.
        if calls_passed is False:
            failed = next(check for check in result.calls if not check.passed)
            return fail(failed.failure, failed.message)
        result.passed = True
        return None

    if observed == "unparseable" or (output.error is not None and expected != "refuse"):
        return fail(UNPARSEABLE_OUTPUT, f"model output could not be parsed: {output.error}")

    if observed != expected:
        if expected in DECLINING_OUTCOMES and observed == "answer":
            return fail(MISSED_REFUSAL, f"expected the model to {expected}, it called "
                        + ", ".join(repr(call.name) for call in output.calls))
        return fail(WRONG_REFUSAL, f"expected outcome {expected!r}, the model's outcome was {observed!r}")

    if calls_passed is False:
        failed = next(check for check in result.calls if not check.passed)
        if not ordered and len(output.calls) != len(expected_calls):
            return fail(WRONG_TOOL, f"expected {len(expected_calls)} call(s), the model made "
                        f"{len(output.calls)}; {failed.message}")
        return fail(failed.failure, failed.message)
    result.passed = True
    return None
