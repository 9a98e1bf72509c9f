"""Eval sets: the BFCL-compatible JSONL format, its validation, digest and freezing.

One case per line, a JSON object with these fields:

    id               str, unique in the set
    question         list of turns, each a list of chat messages ({"role", "content"})
    function         list of function docs ({"name", "description", "parameters"}); may be
                     omitted in a pack's eval set, meaning "the pack's tools"
    ground_truth     BFCL possible-answer shape: [{"func": {"arg": [v1, v2], "opt": ["", d]}}];
                     one entry per call, parallel calls matched order-free; "" marks an
                     argument that may be omitted
    category         e.g. rate_lookup, guidance, refusal, escalation, silent, multi_step,
                     irrelevance
    expected_outcome answer | refuse | escalate | silent (default: refuse for the
                     irrelevance category, else answer)
    rules            ids of the pack rules the case exercises
    expected_calls   ordered call sequence of a multi-step case, each entry in
                     possible-answer shape; "$any" accepts any value of the right type
    task             the task dict a pack's task checker reads: {"id", "request",
                     "category", "expected": {...}}

Only id and question are required by the format, but a case must give something to check:
ground_truth, expected_calls, task or expected_outcome (or the irrelevance category).

The digest is SHA-256 over the canonical lines of the set (sorted keys, compact
separators, literal UTF-8, one "\\n" after each line), written "sha256:<hex>". An eval set
is frozen before it is used: `freeze_evalset` writes the canonical lines to
artifacts/evalsets/<hex>/cases.jsonl with a manifest.json, both read-only, and claims
its name under artifacts/evalsets/names/. Loading a frozen set re-hashes the file and
raises EvalSetTamperedError when it no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from appliance.errors import NotFoundError, ReckonError

log = logging.getLogger(__name__)

FORMAT = "reckon-evalset/1"
EXPECTED_OUTCOMES = ("answer", "refuse", "escalate", "silent")
KNOWN_FIELDS = ("id", "question", "function", "ground_truth", "category", "expected_outcome",
                "rules", "expected_calls", "task")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
# BFCL's type names plus the JSON Schema names that pack tools use.
PARAMETER_TYPES = ("string", "integer", "float", "number", "boolean", "array", "tuple", "dict",
                   "object", "any", "null")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_REPORTED_PROBLEMS = 50


class EvalSetError(ReckonError):
    """An eval set file failed validation; `problems` lists (line, field, problem)."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]):
        self.source = source
        self.problems = problems
        shown = problems[:MAX_REPORTED_PROBLEMS]
        lines = [_format_problem(source, line, name, problem) for line, name, problem in shown]
        if len(problems) > len(shown):
            lines.append(f"... and {len(problems) - len(shown)} more problems")
        super().__init__(f"invalid eval set ({len(problems)} problem(s)); fix these lines:\n"
                         + "\n".join(lines))


def _format_problem(source: str, line: int | None, name: str, problem: str) -> str:
    where = source if line is None else f"{source}: line {line}"
    return f"{where}: {name}: {problem}"


class EvalSetTamperedError(ReckonError):
    """A frozen eval set's files no longer match the digest they were frozen under."""


# -- cases ---------------------------------------------------------------------------------


@dataclass
class EvalCase:
    """One validated eval case. `data` is the line as given; `line` its 1-based number."""

    id: str
    question: list[list[dict]]
    function: list[dict] | None = None
    ground_truth: list[dict] | None = None
    category: str | None = None
    expected_outcome: str = "answer"
    rules: list[str] = field(default_factory=list)
    expected_calls: list[dict] | None = None
    task: dict | None = None
    line: int | None = None
    evalset_digest: str | None = None
    data: dict = field(default_factory=dict)

    @property
    def multi_step(self) -> bool:
        """True for the multi_step category and for cases expecting more than one step."""
        if self.category == "multi_step":
            return True
        return self.expected_calls is not None and len(self.expected_calls) > 1

    @property
    def messages(self) -> list[dict]:
        """The messages of all turns in order (a single-turn case has one turn)."""
        return [message for turn in self.question for message in turn]

    @classmethod
    def from_dict(cls, data: Mapping, line: int | None = None,
                  evalset_digest: str | None = None) -> "EvalCase":
        """Validate one case; raises EvalSetError naming the field on invalid input."""
        problems = validate_case(data)
        if problems:
            raise EvalSetError(f"case {data.get('id', '?') if isinstance(data, Mapping) else '?'}",
                               [(line, name, problem) for name, problem in problems])
        return _build_case(data, line, evalset_digest)

    def to_dict(self) -> dict:
        return dict(self.data)


def _build_case(data: Mapping, line: int | None, digest: str | None) -> EvalCase:
    category = data.get("category")
    outcome = data.get("expected_outcome")
    if outcome is None:
        outcome = "refuse" if category == "irrelevance" else "answer"
    return EvalCase(
        id=data["id"], question=data["question"], function=data.get("function"),
        ground_truth=data.get("ground_truth"), category=category, expected_outcome=outcome,
        rules=list(data.get("rules") or []), expected_calls=data.get("expected_calls"),
        task=data.get("task"), line=line, evalset_digest=digest, data=dict(data),
    )


def validate_case(data: Any) -> list[tuple[str, str]]:
    """Return (field, problem) for everything wrong with one case; empty when valid."""
    if not isinstance(data, Mapping):
        return [("(line)", f"must be a JSON object, got {type(data).__name__}")]
    problems: list[tuple[str, str]] = []
    for name in data:
        if name not in KNOWN_FIELDS:
            problems.append((name, f"unknown field; known fields: {', '.join(KNOWN_FIELDS)}"))

    case_id = data.get("id")
    if not isinstance(case_id, str) or not case_id.strip():
        problems.append(("id", "missing or not a non-empty string"))

    problems.extend(_validate_question(data.get("question")))

    functions = data.get("function")
    if "function" in data:
        problems.extend(_validate_functions(functions))
    # Without a function list (a pack's eval set) the expected calls are checked against
    # the pack's tools at run time instead.
    docs = None
    if isinstance(functions, list):
        docs = {doc["name"]: doc for doc in functions
                if isinstance(doc, Mapping) and isinstance(doc.get("name"), str)}

    for name in ("ground_truth", "expected_calls"):
        if name in data:
            problems.extend(_validate_possible_answer(name, data[name], docs))
    if "ground_truth" in data and "expected_calls" in data:
        problems.append(("expected_calls", "give either ground_truth (one step) or "
                         "expected_calls (an ordered sequence), not both"))

    category = data.get("category")
    if "category" in data and (not isinstance(category, str) or not category.strip()):
        problems.append(("category", "must be a non-empty string"))
    outcome = data.get("expected_outcome")
    if "expected_outcome" in data and outcome not in EXPECTED_OUTCOMES:
        problems.append(("expected_outcome",
                         f"{outcome!r} is not one of {', '.join(EXPECTED_OUTCOMES)}"))
    rules = data.get("rules")
    if "rules" in data and (not isinstance(rules, list)
                            or not all(isinstance(rule, str) and rule for rule in rules)):
        problems.append(("rules", "must be a list of rule id strings"))
    if "task" in data:
        problems.extend(_validate_task(data["task"]))

    has_check = any(name in data for name in ("ground_truth", "expected_calls", "task",
                                              "expected_outcome")) or category == "irrelevance"
    if not has_check:
        problems.append(("ground_truth", "the case has nothing to check: give ground_truth, "
                         "expected_calls, task or expected_outcome"))
    if outcome == "silent" and ("ground_truth" in data or "expected_calls" in data):
        problems.append(("expected_outcome", "a 'silent' case expects no calls; remove "
                         "ground_truth and expected_calls"))
    if outcome == "answer" and not any(name in data for name in ("ground_truth", "expected_calls", "task")):
        problems.append(("expected_outcome", "an 'answer' case needs ground_truth, "
                         "expected_calls or task to check the answer against"))
    return problems


def _validate_question(question: Any) -> list[tuple[str, str]]:
    if not isinstance(question, list) or not question:
        return [("question", "missing or not a non-empty list of turns")]
    problems = []
    for turn_index, turn in enumerate(question):
        where = f"question[{turn_index}]"
        if not isinstance(turn, list) or not turn:
            problems.append((where, "a turn must be a non-empty list of messages"))
            continue
        for message_index, message in enumerate(turn):
            at = f"{where}[{message_index}]"
            if not isinstance(message, Mapping):
                problems.append((at, "a message must be an object with role and content"))
                continue
            if message.get("role") not in MESSAGE_ROLES:
                problems.append((f"{at}.role", f"{message.get('role')!r} is not one of "
                                 f"{', '.join(MESSAGE_ROLES)}"))
            content = message.get("content")
            if not isinstance(content, str) and not (content is None and message.get("tool_calls")):
                problems.append((f"{at}.content", "must be a string"))
    return problems


def _validate_functions(functions: Any) -> list[tuple[str, str]]:
    if not isinstance(functions, list) or not functions:
        return [("function", "must be a non-empty list of function docs (omit it to use the "
                 "pack's tools)")]
    problems = []
    seen: set[str] = set()
    for index, doc in enumerate(functions):
        where = f"function[{index}]"
        if not isinstance(doc, Mapping):
            problems.append((where, "must be an object"))
            continue
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            problems.append((f"{where}.name", "missing or not a non-empty string"))
        elif name in seen:
            problems.append((f"{where}.name", f"duplicate function name {name!r}"))
        else:
            seen.add(name)
        parameters = doc.get("parameters")
        if not isinstance(parameters, Mapping):
            problems.append((f"{where}.parameters", "missing or not an object"))
            continue
        properties = parameters.get("properties", {})
        if not isinstance(properties, Mapping):
            problems.append((f"{where}.parameters.properties", "must be an object"))
            continue
        required = parameters.get("required", [])
        if not isinstance(required, list) or not all(isinstance(item, str) for item in required):
            problems.append((f"{where}.parameters.required", "must be a list of names"))
        else:
            for item in required:
                if item not in properties:
                    problems.append((f"{where}.parameters.required",
                                     f"{item!r} is not among the properties"))
        for parameter, schema in properties.items():
            at = f"{where}.parameters.properties.{parameter}"
            if not isinstance(schema, Mapping):
                problems.append((at, "must be an object"))
                continue
            declared = schema.get("type")
            names = declared if isinstance(declared, list) else [declared]
            if declared is not None and not all(item in PARAMETER_TYPES for item in names):
                problems.append((f"{at}.type", f"{declared!r} is not one of "
                                 f"{', '.join(PARAMETER_TYPES)}"))
    return problems


def _validate_possible_answer(name: str, value: Any, docs: dict | None) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        return [(name, "must be a non-empty list of {function_name: {argument: [values]}}")]
    problems = []
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, Mapping) or len(entry) != 1:
            problems.append((where, "must be an object with exactly one key, the function name"))
            continue
        ((function, arguments),) = entry.items()
        if not isinstance(arguments, Mapping):
            problems.append((f"{where}.{function}", "must map argument names to lists of "
                             "possible values"))
            continue
        doc = None
        if docs is not None:
            doc = docs.get(function)
            if doc is None:
                problems.append((f"{where}", f"function {function!r} is not in the 'function' list"))
        properties = ((doc or {}).get("parameters") or {}).get("properties") or {}
        for argument, possible in arguments.items():
            at = f"{where}.{function}.{argument}"
            if not isinstance(possible, list) or not possible:
                problems.append((at, "must be a non-empty list of possible values "
                                 "(\"\" marks an optional argument)"))
            if doc is not None and argument not in properties:
                problems.append((at, f"argument is not a parameter of {function!r}"))
    return problems


def _validate_task(task: Any) -> list[tuple[str, str]]:
    if not isinstance(task, Mapping):
        return [("task", "must be an object with id and request")]
    problems = []
    for key in ("id", "request"):
        if not isinstance(task.get(key), str) or not task.get(key):
            problems.append((f"task.{key}", "missing or not a non-empty string"))
    if "expected" in task and not isinstance(task["expected"], Mapping):
        problems.append(("task.expected", "must be an object"))
    return problems


# -- sets ----------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """A validated eval set. `path` is its file; frozen sets also carry their manifest."""

    digest: str
    cases: list[EvalCase]
    source: str
    name: str | None = None
    path: Path | None = None
    manifest: dict | None = None

    @property
    def frozen(self) -> bool:
        return self.manifest is not None

    def case(self, case_id: str) -> EvalCase:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise NotFoundError(f"eval set {self.digest} has no case {case_id!r}")

    def categories(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for case in self.cases:
            key = case.category or "(none)"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def canonical_text(self) -> str:
        return "".join(canonical_line(case.data) + "\n" for case in self.cases)


def canonical_line(case: Mapping) -> str:
    return json.dumps(case, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)


def digest_text(canonical_text: str) -> str:
    return "sha256:" + hashlib.sha256(canonical_text.encode("utf-8")).hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"number {value} is out of range")
    return number


def parse_evalset(text: str, source: str = "<eval set>") -> EvalSet:
    """Parse and validate JSONL text; raise EvalSetError listing every bad line."""
    problems: list[tuple[int | None, str, str]] = []
    raw_cases: list[tuple[int, dict]] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line, parse_constant=_reject_constant, parse_float=_finite)
        except json.JSONDecodeError as error:
            problems.append((number, "(line)", f"invalid JSON: {error.msg} at column {error.colno}"))
            continue
        except ValueError as error:
            problems.append((number, "(line)", f"invalid JSON: {error}"))
            continue
        case_problems = validate_case(data)
        problems.extend((number, name, problem) for name, problem in case_problems)
        if case_problems:
            continue
        if data["id"] in first_line:
            problems.append((number, "id", f"duplicate id {data['id']!r} (first on line "
                             f"{first_line[data['id']]})"))
            continue
        first_line[data["id"]] = number
        raw_cases.append((number, data))
    if not raw_cases and not problems:
        problems.append((None, "(file)", "contains no cases"))
    if problems:
        raise EvalSetError(source, problems)

    canonical = "".join(canonical_line(data) + "\n" for _, data in raw_cases)
    digest = digest_text(canonical)
    cases = [_build_case(data, number, digest) for number, data in raw_cases]
    return EvalSet(digest=digest, cases=cases, source=source)


def load_evalset(path: str | os.PathLike) -> EvalSet:
    """Load and validate an eval set file (not frozen; see `freeze_evalset`)."""
    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"eval set file {file} not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise EvalSetError(str(file), [(None, "(file)", f"not UTF-8 text: {error}")]) from None
    evalset = parse_evalset(text, str(file))
    evalset.path = file
    return evalset


# -- freezing ------------------------------------------------------------------------------


def evalsets_root(workspace) -> Path:
    return Path(workspace.artifacts) / "evalsets"


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ReckonError(f"invalid eval set name {name!r}: use letters, digits, '.', '_' and "
                          "'-', starting with a letter or digit, at most 100 characters")


def freeze_evalset(path: str | os.PathLike, workspace, name: str | None = None,
                   metadata: Mapping | None = None) -> EvalSet:
    """Validate an eval set file and freeze it into the workspace; return the frozen set.

    Freezing the same content again returns the existing frozen copy. A name is bound to
    one digest: freezing different content under a taken name raises ReckonError.
    """
    evalset = load_evalset(path)
    return freeze(evalset, workspace, name or Path(path).stem, metadata)


def freeze(evalset: EvalSet, workspace, name: str, metadata: Mapping | None = None) -> EvalSet:
    """Freeze a validated eval set under `name` (see `freeze_evalset`)."""
    _check_name(name)
    root = evalsets_root(workspace)
    names_dir = root / "names"
    names_dir.mkdir(parents=True, exist_ok=True)

    claimed = _read_name(names_dir / name)
    if claimed is not None and claimed != evalset.digest:
        raise ReckonError(f"eval set name {name!r} is already frozen with digest {claimed}; "
                          f"this content has digest {evalset.digest}. Frozen sets never change: "
                          "freeze it under a different --name")

    folder = root / _hex(evalset.digest)
    if folder.exists():
        existing = load_frozen(workspace, evalset.digest)
    else:
        _write_frozen(evalset, folder, name, metadata)
        existing = load_frozen(workspace, evalset.digest)
        log.info("froze eval set %s as %s (%d cases)", name, evalset.digest, len(evalset.cases))

    if claimed is None:
        _claim_name(names_dir / name, evalset.digest)
    existing.name = name
    return existing


def _write_frozen(evalset: EvalSet, folder: Path, name: str, metadata: Mapping | None) -> None:
    manifest = {
        "format": FORMAT, "digest": evalset.digest, "name": name,
        "n_cases": len(evalset.cases), "categories": evalset.categories(),
        "source": evalset.source, "frozen_at": time.time(),
        "metadata": dict(metadata or {}),
    }
    # Write into a temporary folder and rename it, so a crash never leaves a partial set.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        (staging / "cases.jsonl").write_text(evalset.canonical_text(), encoding="utf-8")
        (staging / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
            encoding="utf-8")
        for file in staging.iterdir():
            os.chmod(file, 0o444)
        os.chmod(staging, 0o755)
        os.rename(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.exists():
            raise
        # Another process froze the same content at the same time; its copy is identical.


def _read_name(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _claim_name(path: Path, digest: str) -> None:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        claimed = _read_name(path)
        if claimed != digest:
            raise ReckonError(f"eval set name {path.name!r} was just frozen with digest "
                              f"{claimed}; freeze under a different --name") from None
        return
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(digest + "\n")


def _names_by_digest(root: Path) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    names_dir = root / "names"
    if names_dir.is_dir():
        for path in sorted(names_dir.iterdir()):
            digest = _read_name(path)
            if digest:
                names.setdefault(digest, []).append(path.name)
    return names


def resolve_frozen(workspace, ref: str) -> str:
    """Return the digest a reference names: a name, "sha256:<hex>" or a hex prefix (>= 6)."""
    root = evalsets_root(workspace)
    if NAME_PATTERN.match(ref):
        claimed = _read_name(root / "names" / ref)
        if claimed:
            return claimed
    prefix = _hex(ref).lower()
    if len(prefix) >= 6 and re.fullmatch(r"[0-9a-f]+", prefix) and root.is_dir():
        matches = [path.name for path in root.iterdir()
                   if path.is_dir() and path.name.startswith(prefix) and len(path.name) == 64]
        if len(matches) == 1:
            return "sha256:" + matches[0]
        if len(matches) > 1:
            raise ReckonError(f"eval set reference {ref!r} is ambiguous: it matches "
                              f"{len(matches)} frozen sets; give more of the digest")
    raise NotFoundError(f"no frozen eval set named {ref!r}; `reckon evalset list` shows them")


def load_frozen(workspace, ref: str) -> EvalSet:
    """Load a frozen eval set by name or digest, verifying it against its digest."""
    digest = resolve_frozen(workspace, ref)
    folder = evalsets_root(workspace) / _hex(digest)
    cases_file = folder / "cases.jsonl"
    manifest_file = folder / "manifest.json"
    if not cases_file.is_file() or not manifest_file.is_file():
        raise EvalSetTamperedError(f"frozen eval set {digest} is incomplete: {folder} lacks "
                                   "cases.jsonl or manifest.json; delete the folder and freeze "
                                   "the source file again")
    content = cases_file.read_bytes()
    actual = "sha256:" + hashlib.sha256(content).hexdigest()
    if actual != digest:
        raise EvalSetTamperedError(f"frozen eval set {digest} was modified after freezing: "
                                   f"{cases_file} now hashes to {actual}. Results against it "
                                   "cannot be trusted; delete the folder and freeze the "
                                   "original file again")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvalSetTamperedError(f"frozen eval set {digest}: manifest.json is not valid JSON "
                                   f"({error.msg}); delete the folder and freeze again") from None
    if not isinstance(manifest, dict) or manifest.get("digest") != digest:
        raise EvalSetTamperedError(f"frozen eval set {digest}: manifest.json names digest "
                                   f"{manifest.get('digest') if isinstance(manifest, dict) else None}; "
                                   "delete the folder and freeze again")
    for file in (cases_file, manifest_file):
        if file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            log.warning("frozen eval set file %s is writable; it should be read-only", file)

    evalset = parse_evalset(content.decode("utf-8"), str(cases_file))
    evalset.path = cases_file
    evalset.manifest = manifest
    evalset.name = manifest.get("name")
    return evalset


def list_frozen(workspace) -> list[dict]:
    """Return one summary per frozen set (digest, names, n_cases, categories, frozen_at)."""
    root = evalsets_root(workspace)
    if not root.is_dir():
        return []
    names = _names_by_digest(root)
    rows = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or len(folder.name) != 64:
            continue
        digest = "sha256:" + folder.name
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            manifest = {}
        rows.append({
            "digest": digest, "names": names.get(digest, []),
            "n_cases": manifest.get("n_cases"), "categories": manifest.get("categories", {}),
            "frozen_at": manifest.get("frozen_at"), "source": manifest.get("source"),
        })
    rows.sort(key=lambda row: row.get("frozen_at") or 0)
    return rows


def iter_cases(evalset: EvalSet, category: str | None = None) -> Iterable[EvalCase]:
    return (case for case in evalset.cases if category is None or case.category == category)
