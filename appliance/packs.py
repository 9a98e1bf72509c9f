"""Tool packs: tools, policy rules, prompts, task sources and the held-out eval set.

A pack is a folder with a `pack.yaml` manifest and a Python module holding the tool
implementations, rule checkers and task generators:

    id: entitlements
    version: 1.0.0
    module: impl                      # impl.py in the pack folder
    setup: open_context               # fn(pack_dir) -> context passed to every tool
    terminal_tools: [final_answer, refuse, escalate_to_officer]
    tools:
      - name: lookup_rate
        description: ...
        implementation: lookup_rate   # fn(ctx, **arguments) -> JSON-serialisable
        timeout_s: 5
        parameters: {JSON Schema}
    rules:
      - id: lookup-before-stating
        text: Look a value up before you state it.
        checker: check_lookup_before_stating   # fn(TraceView) -> RuleVerdict
        critical: true
    task_checker: check_expected_outcome       # fn(TraceView) -> RuleVerdict
    step_checker: check_step                   # fn(TraceView, CallRecord) -> RuleVerdict
    step_hint: write_hint                      # fn(task, next_tool, calls_made) -> str | None
    prompts: {full: prompts/full.md, compact: prompts/compact.md}   # more names allowed
    tasks:
      - {name: generated, generator: generate_tasks}   # fn(n, seed) -> list[dict]
      - {name: extra, file: tasks/extra.jsonl}
    evalset: eval/heldout.jsonl

`load_pack` validates all of it and raises PackError naming the file and the field. The
pack digest is SHA-256 over every file of the folder (sorted relative paths and contents),
so any edit to code, data or prompts gives a new digest; every trace records it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema
import yaml

from appliance.chat import ToolCall, message_tool_calls, ArgumentsError
from appliance.errors import PackError

PACKS_ROOT = Path(__file__).resolve().parent.parent / "tools"
IGNORED_PARTS = {"__pycache__", ".pytest_cache"}


class ToolError(Exception):
    """Raised by a tool implementation for an error the model should see (e.g. not found)."""


@dataclass
class RuleVerdict:
    passed: bool | None            # None: the rule does not apply to this trace
    reason: str = ""

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason}


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    function: Callable[..., Any]
    timeout_s: float = 10.0
    terminal: bool = False

    def openai_schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name,
                                                 "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass
class Rule:
    id: str
    text: str
    checker: Callable[["TraceView"], RuleVerdict]
    critical: bool = False


@dataclass
class TaskSource:
    name: str
    generator: Callable[[int, int], list[dict]] | None = None
    file: Path | None = None


@dataclass
class Pack:
    id: str
    version: str
    description: str
    path: Path
    digest: str
    tools: dict[str, Tool]
    rules: list[Rule]
    prompts: dict[str, str]
    task_sources: list[TaskSource]
    evalset_path: Path | None
    terminal_tools: list[str]
    task_checker: Callable[["TraceView"], RuleVerdict] | None = None
    #: fn(TraceView, CallRecord) -> RuleVerdict: judges one executed call (step-level
    #: rejection sampling in the harness); optional
    step_checker: Callable[["TraceView", "CallRecord"], RuleVerdict] | None = None
    #: fn(task, next_tool, calls_made) -> str | None: a teacher hint drawn from the task's
    #: expectations (harness `hints`); never part of a recorded trace; optional
    step_hint: Callable[[dict, str, int], str | None] | None = None
    setup: Callable[[Path], Any] | None = None
    module: Any = None

    def openai_tools(self) -> list[dict]:
        return [tool.openai_schema() for tool in self.tools.values()]

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def make_context(self) -> Any:
        """Open the resources the tools need (one per worker thread: connections are not shared)."""
        return self.setup(self.path) if self.setup else None

    def tasks(self, n: int, seed: int = 0, source: str | None = None) -> list[dict]:
        """Return n tasks, drawn in turn from each task source (or only `source`)."""
        sources = [s for s in self.task_sources if source is None or s.name == source]
        if not sources:
            raise PackError(self.path / "pack.yaml", "tasks",
                            f"no task source named {source!r}")
        pools = []
        per_source = -(-n // len(sources))
        for task_source in sources:
            if task_source.generator is not None:
                pool = task_source.generator(per_source, seed)
            else:
                pool = read_task_file(task_source.file)[:per_source]
            pools.append(pool)
        tasks: list[dict] = []
        index = 0
        while len(tasks) < n and any(index < len(pool) for pool in pools):
            for pool in pools:
                if index < len(pool) and len(tasks) < n:
                    tasks.append(pool[index])
            index += 1
        return tasks

    def verdicts(self, view: "TraceView") -> dict[str, dict]:
        """Run every rule checker (and the task checker as "task") on a finished trace."""
        results: dict[str, dict] = {}
        checks = [(rule.id, rule.checker) for rule in self.rules]
        if self.task_checker is not None:
            checks.append(("task", self.task_checker))
        for rule_id, checker in checks:
            try:
                verdict = checker(view)
            except Exception as error:  # noqa: BLE001 - a broken checker fails its rule, visibly
                verdict = RuleVerdict(False, f"checker raised {type(error).__name__}: {error}")
            results[rule_id] = verdict.to_dict()
        return results


@dataclass
class CallRecord:
    """One executed tool call with its result, as rule checkers see it."""

    call: ToolCall
    result: Any = None
    error: str | None = None


class TraceView:
    """A read-only view of a trace for rule checkers and verifiers."""

    def __init__(self, task: dict, messages: list[dict], outcome: str | None = None):
        self.task = task
        self.messages = messages
        self.outcome = outcome
        self.calls: list[CallRecord] = []
        results: dict[str, dict] = {
            message.get("tool_call_id"): message
            for message in messages if message.get("role") == "tool"
        }
        for message in messages:
            if message.get("role") != "assistant":
                continue
            for raw in message.get("tool_calls") or []:
                try:
                    call = ToolCall.from_openai(raw)
                except ArgumentsError:
                    continue
                record = CallRecord(call)
                result_message = results.get(raw.get("id"))
                if result_message is not None:
                    record.result, record.error = _decode_result(result_message.get("content"))
                self.calls.append(record)

    @property
    def expected(self) -> dict:
        return self.task.get("expected", {})

    @property
    def request(self) -> str:
        return self.task.get("request", "")

    def calls_named(self, name: str) -> list[CallRecord]:
        return [record for record in self.calls if record.call.name == name]

    @property
    def final_call(self) -> CallRecord | None:
        return self.calls[-1] if self.calls else None

    def assistant_text(self) -> str:
        """Return all text the model produced: content plus tool-call arguments."""
        parts = []
        for message in self.messages:
            if message.get("role") == "assistant":
                parts.append(message.get("content") or "")
                for call in message_tool_calls_safe(message):
                    parts.append(json.dumps(call.arguments, ensure_ascii=False))
        return "\n".join(parts)


def message_tool_calls_safe(message: dict) -> list[ToolCall]:
    try:
        return message_tool_calls(message)
    except ArgumentsError:
        return []


def _decode_result(content: Any) -> tuple[Any, str | None]:
    try:
        value = json.loads(content) if isinstance(content, str) else content
    except json.JSONDecodeError:
        return content, None
    if isinstance(value, dict) and set(value) == {"error"}:
        return None, str(value["error"])
    return value, None


# -- loading -------------------------------------------------------------------------------


def pack_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()
                       and not IGNORED_PARTS.intersection(p.parts) and p.suffix != ".pyc"):
        relative = path.relative_to(folder).as_posix()
        digest.update(relative.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def resolve_pack_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if (candidate / "pack.yaml").is_file():
        return candidate.resolve()
    shipped = PACKS_ROOT / str(name_or_path)
    if (shipped / "pack.yaml").is_file():
        return shipped
    available = sorted(p.parent.name for p in PACKS_ROOT.glob("*/pack.yaml"))
    raise PackError(candidate, "pack.yaml",
                    f"not found; give a folder with a pack.yaml or one of: {', '.join(available)}")


_CACHE: dict[tuple[Path, str], Pack] = {}


def load_pack(name_or_path: str | Path) -> Pack:
    folder = resolve_pack_path(name_or_path)
    digest = pack_digest(folder)
    key = (folder, digest)
    if key not in _CACHE:
        _CACHE[key] = _load(folder, digest)
    return _CACHE[key]


def _load(folder: Path, digest: str) -> Pack:
    manifest_path = folder / "pack.yaml"
    try:
        manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PackError(manifest_path, "(file)", f"invalid YAML: {error}") from None
    if not isinstance(manifest, dict):
        raise PackError(manifest_path, "(file)", "must be a mapping of fields")

    def require(key: str, kind: type, where: dict = manifest, prefix: str = "") -> Any:
        value = where.get(key)
        if value is None:
            raise PackError(manifest_path, prefix + key, "missing")
        if not isinstance(value, kind):
            raise PackError(manifest_path, prefix + key,
                            f"must be {kind.__name__}, got {type(value).__name__}")
        return value

    pack_id = require("id", str)
    version = str(require("version", (str, int, float)))
    module_name = require("module", str)
    module_path = folder / f"{module_name}.py"
    if not module_path.is_file():
        raise PackError(manifest_path, "module", f"{module_path.name} not found in {folder}")
    module = _import_module(pack_id, module_path)

    def function(name: Any, field_name: str) -> Callable:
        if not isinstance(name, str) or not name:
            raise PackError(manifest_path, field_name, "missing or not a function name")
        value = getattr(module, name, None)
        if not callable(value):
            raise PackError(manifest_path, field_name,
                            f"{module_path.name} has no function {name!r}")
        return value

    terminal = manifest.get("terminal_tools") or []
    tools: dict[str, Tool] = {}
    for index, entry in enumerate(require("tools", list)):
        prefix = f"tools[{index}]."
        if not isinstance(entry, dict):
            raise PackError(manifest_path, f"tools[{index}]", "must be a mapping")
        name = require("name", str, entry, prefix)
        if name in tools:
            raise PackError(manifest_path, prefix + "name", f"duplicate tool name {name!r}")
        parameters = require("parameters", dict, entry, prefix)
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as error:
            location = ".".join(str(part) for part in error.path) or "(root)"
            raise PackError(manifest_path, prefix + "parameters",
                            f"invalid JSON Schema at {location}: {error.message}") from None
        if parameters.get("type") != "object":
            raise PackError(manifest_path, prefix + "parameters.type", "must be \"object\"")
        if "implementation" not in entry:
            raise PackError(manifest_path, prefix + "implementation",
                            f"missing: tool {name!r} has no implementation")
        tools[name] = Tool(name=name, description=require("description", str, entry, prefix),
                           parameters=parameters,
                           function=function(entry["implementation"], prefix + "implementation"),
                           timeout_s=float(entry.get("timeout_s", 10.0)),
                           terminal=name in terminal)
    for index, name in enumerate(terminal):
        if name not in tools:
            raise PackError(manifest_path, f"terminal_tools[{index}]", f"no tool named {name!r}")

    rules: list[Rule] = []
    seen_rules: set[str] = set()
    for index, entry in enumerate(require("rules", list)):
        prefix = f"rules[{index}]."
        rule_id = require("id", str, entry, prefix)
        if rule_id in seen_rules:
            raise PackError(manifest_path, prefix + "id", f"duplicate rule id {rule_id!r}")
        seen_rules.add(rule_id)
        if "checker" not in entry:
            raise PackError(manifest_path, prefix + "checker",
                            f"missing: rule {rule_id!r} has no checker")
        rules.append(Rule(id=rule_id, text=require("text", str, entry, prefix),
                          checker=function(entry["checker"], prefix + "checker"),
                          critical=bool(entry.get("critical", False))))

    prompts: dict[str, str] = {}
    prompt_entries = require("prompts", dict)
    # full and compact are required; a pack may name more (e.g. a teacher prompt).
    for kind in ["full", "compact", *sorted(set(prompt_entries) - {"full", "compact"})]:
        relative = prompt_entries.get(kind)
        if not relative or not isinstance(relative, str):
            raise PackError(manifest_path, f"prompts.{kind}", "missing")
        prompt_path = folder / relative
        if not prompt_path.is_file():
            raise PackError(manifest_path, f"prompts.{kind}", f"file {relative!r} not found")
        prompts[kind] = prompt_path.read_text(encoding="utf-8").strip()

    sources: list[TaskSource] = []
    for index, entry in enumerate(require("tasks", list)):
        prefix = f"tasks[{index}]."
        name = require("name", str, entry, prefix)
        if "generator" in entry:
            sources.append(TaskSource(name, generator=function(entry["generator"], prefix + "generator")))
        elif "file" in entry:
            task_file = folder / entry["file"]
            if not task_file.is_file():
                raise PackError(manifest_path, prefix + "file", f"file {entry['file']!r} not found")
            sources.append(TaskSource(name, file=task_file))
        else:
            raise PackError(manifest_path, prefix + "generator", "a task source needs generator or file")

    evalset_path = None
    if manifest.get("evalset"):
        evalset_path = folder / manifest["evalset"]
        if not evalset_path.is_file():
            raise PackError(manifest_path, "evalset", f"file {manifest['evalset']!r} not found")

    return Pack(
        id=pack_id, version=version, description=str(manifest.get("description", "")),
        path=folder, digest=digest, tools=tools, rules=rules, prompts=prompts,
        task_sources=sources, evalset_path=evalset_path, terminal_tools=list(terminal),
        task_checker=function(manifest["task_checker"], "task_checker")
        if manifest.get("task_checker") else None,
        step_checker=function(manifest["step_checker"], "step_checker")
        if manifest.get("step_checker") else None,
        step_hint=function(manifest["step_hint"], "step_hint")
        if manifest.get("step_hint") else None,
        setup=function(manifest["setup"], "setup") if manifest.get("setup") else None,
        module=module,
    )


def _import_module(pack_id: str, path: Path):
    name = f"reckon_pack_{pack_id}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise PackError(path, "(module)", f"failed to import: {type(error).__name__}: {error}") from None
    return module


def read_task_file(path: Path) -> list[dict]:
    tasks = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as error:
            raise PackError(path, f"line {number}", f"invalid JSON: {error.msg}") from None
        if not isinstance(task, dict) or not isinstance(task.get("id"), str) \
                or not isinstance(task.get("request"), str):
            raise PackError(path, f"line {number}", "a task needs string fields 'id' and 'request'")
        tasks.append(task)
    return tasks
