"""The harness: run a tool pack's tasks against a teacher and record every trace.

`AgentLoop.run_task` drives one conversation: the model sees the system prompt, the tools and
the history and emits tool calls; each call's arguments are validated against the tool's JSON
Schema, the tool runs with a timeout, and its result goes back to the model, until a terminal
tool (answer, refuse, escalate), the step limit or the token limit. Every failure becomes an
entry in the trace's `errors` with its kind, and never escapes as an exception:

    unparseable_output   the output holds no parseable tool call
    unknown_tool         the call names a tool the pack does not have
    wrong_argument_type  an argument has the wrong JSON type
    invalid_arguments    any other schema violation (missing, unexpected, enum, ...)
    tool_error           the tool raised
    timeout              the tool ran past its timeout
    runtime_error        the backend failed to produce a completion
    context_overflow     the prompt does not fit, or the backend truncated it
    step_limit / token_limit

`run_harness` runs N tasks x K samples with C conversations in flight (server backends) and
writes each finished trace at once, so killing the process loses no finished trace; the run
is marked interrupted and `resume` finishes it.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema

from appliance.chat import assistant_message, canonical_json, tool_message
from appliance.errors import NotFoundError, ReckonError
from appliance.packs import Pack, ToolError, TraceView, load_pack
from appliance.runtimes import ContextOverflow, Runtime, RuntimeFailure, Sampling, make_runtime
from appliance.store import Store, new_id, now
from appliance.workspace import Workspace

log = logging.getLogger(__name__)

UNPARSEABLE_FEEDBACK = (
    "Your last reply did not contain a valid tool call. Reply with exactly one tool call in "
    "the form <tool_call>{\"arguments\": {...}, \"name\": \"TOOL\"}</tool_call>."
)


@dataclass
class Limits:
    max_steps: int = 8
    max_total_tokens: int = 32_000


@dataclass
class TraceRecord:
    task: dict
    sample_index: int
    messages: list[dict]
    steps: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    outcome: str = "incomplete"
    rule_verdicts: dict = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


def outcome_of(tool_name: str) -> str:
    """Map a terminal tool to the trace outcome."""
    lowered = tool_name.lower()
    if "refus" in lowered:
        return "refuse"
    if "escalat" in lowered:
        return "escalate"
    return "answer"


class AgentLoop:
    """Runs one task against a runtime with the pack's tools."""

    def __init__(self, pack: Pack, runtime: Runtime, sampling: Sampling,
                 limits: Limits | None = None, prompt: str = "full"):
        self.pack = pack
        self.runtime = runtime
        self.sampling = sampling
        self.limits = limits or Limits()
        self.system_prompt = pack.prompts[prompt]
        self.tools = pack.openai_tools()
        self.validators = {name: jsonschema.Draft202012Validator(tool.parameters)
                           for name, tool in pack.tools.items()}
        self._local = threading.local()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                               thread_name_prefix="tool")

    def context(self) -> Any:
        """Tool resources per worker thread (SQLite connections are not shared)."""
        if not hasattr(self._local, "context"):
            self._local.context = self.pack.make_context()
        return self._local.context

    def run_task(self, task: dict, sample_index: int = 0,
                 sampling: Sampling | None = None) -> TraceRecord:
        sampling = sampling or self.sampling
        messages = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": task["request"]}]
        record = TraceRecord(task=task, sample_index=sample_index, messages=messages)
        started = time.perf_counter()

        for step in range(self.limits.max_steps):
            step_record: dict[str, Any] = {"index": step}
            record.steps.append(step_record)
            try:
                generation = self.runtime.chat(messages, self.tools, sampling)
            except ContextOverflow as error:
                self._fail(record, step_record, "context_overflow", str(error))
                record.outcome = "context_overflow"
                break
            except RuntimeFailure as error:
                self._fail(record, step_record, "runtime_error", str(error))
                record.outcome = "runtime_error"
                break

            step_record.update(prompt_tokens=generation.prompt_tokens,
                               completion_tokens=generation.completion_tokens,
                               latency_s=round(generation.latency_s, 4),
                               raw_output=generation.text, finish_reason=generation.finish_reason)
            record.prompt_tokens += generation.prompt_tokens
            record.completion_tokens += generation.completion_tokens

            if generation.parse_error or not generation.tool_calls:
                reason = generation.parse_error or "no tool call in output"
                self._fail(record, step_record, "unparseable_output", reason)
                messages.append({"role": "assistant", "content": generation.text})
                messages.append({"role": "user", "content": UNPARSEABLE_FEEDBACK})
            else:
                messages.append(assistant_message(generation.tool_calls, generation.content, step))
                terminal = self._execute_calls(record, step_record, messages)
                if terminal is not None:
                    record.outcome = outcome_of(terminal)
                    break

            if record.prompt_tokens + record.completion_tokens > self.limits.max_total_tokens:
                self._fail(record, step_record, "token_limit",
                           f"trace used {record.prompt_tokens + record.completion_tokens} tokens, "
                           f"limit {self.limits.max_total_tokens}")
                record.outcome = "token_limit"
                break
        else:
            self._fail(record, record.steps[-1], "step_limit",
                       f"no terminal tool within {self.limits.max_steps} steps")
            record.outcome = "step_limit"

        record.latency_s = round(time.perf_counter() - started, 4)
        record.rule_verdicts = self.pack.verdicts(TraceView(task, messages, record.outcome))
        return record

    def _execute_calls(self, record: TraceRecord, step_record: dict,
                       messages: list[dict]) -> str | None:
        """Run each call of the last assistant message; return the terminal tool's name."""
        terminal = None
        for raw_call in messages[-1]["tool_calls"]:
            name = raw_call["function"]["name"]
            arguments = json.loads(raw_call["function"]["arguments"])
            result = self._execute(record, step_record, name, arguments)
            messages.append(tool_message(raw_call["id"], name, result))
            tool = self.pack.tools.get(name)
            if tool is not None and tool.terminal and "error" not in result:
                terminal = name
        return terminal

    def _execute(self, record: TraceRecord, step_record: dict, name: str,
                 arguments: dict) -> dict:
        tool = self.pack.tools.get(name)
        if tool is None:
            message = f"unknown tool {name!r}; available tools: {', '.join(self.pack.tools)}"
            self._fail(record, step_record, "unknown_tool", message)
            return {"error": message}

        errors = sorted(self.validators[name].iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            kind = "wrong_argument_type" if first.validator == "type" else "invalid_arguments"
            where = ".".join(str(p) for p in first.path) or "(arguments)"
            message = f"{name}: {where}: {first.message}"
            self._fail(record, step_record, kind, message)
            return {"error": message}

        context = self.context()
        future = self._executor.submit(tool.function, context, **arguments)
        try:
            value = future.result(timeout=tool.timeout_s)
        except concurrent.futures.TimeoutError:
            # NOTE: a Python thread cannot be killed; a tool that never returns keeps its
            # worker thread busy until the process exits.
            message = f"{name} timed out after {tool.timeout_s:g} s"
            self._fail(record, step_record, "timeout", message)
            return {"error": message}
        except ToolError as error:
            self._fail(record, step_record, "tool_error", f"{name}: {error}")
            return {"error": str(error)}
        except Exception as error:  # noqa: BLE001 - a crashing tool is recorded, not raised
            log.warning("tool %s raised %s: %s", name, type(error).__name__, error)
            self._fail(record, step_record, "tool_error", f"{name}: {type(error).__name__}: {error}")
            return {"error": f"{type(error).__name__}: {error}"}
        return value if isinstance(value, dict) else {"result": value}

    @staticmethod
    def _fail(record: TraceRecord, step_record: dict, kind: str, message: str) -> None:
        entry = {"step": step_record.get("index", 0), "kind": kind, "message": message}
        record.errors.append(entry)
        step_record.setdefault("errors", []).append({"kind": kind, "message": message})

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# -- runs ----------------------------------------------------------------------------------


def trace_row(run: dict, record: TraceRecord, tools: list[dict]) -> dict:
    return {
        "id": new_id("tr"), "run_id": run["id"], "task_id": record.task["id"],
        "sample_index": record.sample_index, "pack_id": run["pack_id"],
        "pack_version": run["pack_version"], "pack_digest": run["pack_digest"],
        "task": record.task, "messages": record.messages, "tools": tools,
        "steps": record.steps, "outcome": record.outcome, "errors": record.errors,
        "rule_verdicts": record.rule_verdicts, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "latency_s": record.latency_s,
        "source": "harness", "created_at": now(),
    }


def create_run(store: Store, pack: Pack, runtime: Runtime, *, tasks: list[dict], samples: int,
               concurrency: int, sampling: Sampling, limits: Limits, prompt: str) -> dict:
    run = {
        "id": new_id("run"), "pack_id": pack.id, "pack_version": pack.version,
        "pack_digest": pack.digest, "teacher": runtime.identity(), "sampling": sampling.to_dict(),
        "config": {"tasks": tasks, "samples": samples, "concurrency": concurrency,
                   "limits": limits.__dict__, "prompt": prompt, "pack_path": str(pack.path)},
        "tools": pack.openai_tools(), "status": "running", "created_at": now(),
        "updated_at": now(), "n_tasks": len(tasks), "n_samples": samples, "n_traces": 0,
    }
    store.insert("runs", run)
    log.info("run %s created: pack %s@%s, %d tasks x %d samples", run["id"], pack.id,
             pack.version, len(tasks), samples)
    return run


def pending_work(store: Store, run: dict) -> list[tuple[int, dict, int]]:
    """Return (task index, task, sample index) pairs that have no trace yet."""
    done = set(store.db.execute(
        "select task_id, sample_index from traces where run_id = ?", [run["id"]]).fetchall())
    work = []
    for index, task in enumerate(run["config"]["tasks"]):
        for sample in range(run["n_samples"]):
            if (task["id"], sample) not in done:
                work.append((index, task, sample))
    return work


def sample_settings(base: Sampling, task_index: int, sample_index: int) -> Sampling:
    """Give each (task, sample) its own seed so K samples differ and reruns repeat."""
    return Sampling(**{**base.to_dict(), "seed": base.seed + task_index * 1009 + sample_index * 7919})


def execute_run(store: Store, run: dict, pack: Pack, runtime: Runtime,
                progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Run the pending work of `run`, writing each trace as soon as it finishes."""
    limits = Limits(**run["config"]["limits"])
    sampling = Sampling.from_dict(run["sampling"])
    loop = AgentLoop(pack, runtime, sampling, limits, prompt=run["config"]["prompt"])
    work = pending_work(store, run)
    total = run["n_tasks"] * run["n_samples"]
    finished = total - len(work)
    workers = run["config"]["concurrency"] if runtime.concurrent else 1
    lock = threading.Lock()
    store.update("runs", run["id"], {"status": "running", "updated_at": now()})

    def one(item: tuple[int, dict, int]) -> TraceRecord:
        index, task, sample = item
        return loop.run_task(task, sample, sample_settings(sampling, index, sample))

    def record_done(record: TraceRecord) -> None:
        nonlocal finished
        with lock:
            store.insert("traces", trace_row(run, record, loop.tools))
            finished += 1
            store.update("runs", run["id"], {"n_traces": finished, "updated_at": now()})
            if progress is not None:
                progress(finished, total, {"task_id": record.task["id"], "outcome": record.outcome})

    try:
        if workers <= 1:
            for item in work:
                record_done(one(item))
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                pending: set[concurrent.futures.Future] = set()
                queue = iter(work)
                for item in queue:
                    pending.add(pool.submit(one, item))
                    if len(pending) >= workers * 2:
                        done, pending = concurrent.futures.wait(
                            pending, return_when=concurrent.futures.FIRST_COMPLETED)
                        for future in done:
                            record_done(future.result())
                for future in concurrent.futures.as_completed(pending):
                    record_done(future.result())
    except BaseException as error:
        store.update("runs", run["id"], {"status": "interrupted", "updated_at": now(),
                                         "error": f"{type(error).__name__}: {error}"})
        log.warning("run %s interrupted after %d/%d traces: %s", run["id"], finished, total,
                    type(error).__name__)
        raise
    finally:
        loop.close()
    store.update("runs", run["id"], {"status": "completed", "finished_at": now(),
                                     "updated_at": now(), "n_traces": finished})
    log.info("run %s completed: %d traces", run["id"], finished)
    return store.get("runs", run["id"])


def start_run(workspace: Workspace, *, pack: str, teacher: str, tasks: int, samples: int = 1,
              concurrency: int = 1, temperature: float | None = None, max_tokens: int = 256,
              seed: int = 0, prompt: str = "full", max_steps: int = 8,
              task_source: str | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> dict:
    if tasks < 1:
        raise ReckonError(f"--tasks must be at least 1, got {tasks}")
    if samples < 1:
        raise ReckonError(f"--samples must be at least 1, got {samples}")
    pack_obj = load_pack(pack)
    runtime = make_runtime(teacher)
    try:
        if temperature is None:
            temperature = 0.0 if samples == 1 else 0.8
        sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
        store = workspace.store()
        task_list = pack_obj.tasks(tasks, seed=seed, source=task_source)
        run = create_run(store, pack_obj, runtime, tasks=task_list, samples=samples,
                         concurrency=concurrency, sampling=sampling,
                         limits=Limits(max_steps=max_steps), prompt=prompt)
        return execute_run(store, run, pack_obj, runtime, progress)
    finally:
        runtime.close()


def resume_run(workspace: Workspace, run_id: str, teacher: str | None = None,
               progress: Callable[[int, int, dict], None] | None = None) -> dict:
    store = workspace.store()
    run = store.get("runs", run_id)
    if run is None:
        raise NotFoundError(f"run {run_id!r} not found; `reckon traces list --runs` lists runs")
    if run["status"] == "completed":
        return run
    pack_obj = load_pack(run["config"].get("pack_path") or run["pack_id"])
    if pack_obj.digest != run["pack_digest"]:
        raise ReckonError(
            f"run {run_id} was recorded with pack digest {run['pack_digest']}, but the pack on "
            f"disk now has {pack_obj.digest}; restore the pack or start a new run")
    runtime = make_runtime(teacher or _spec_from_identity(run["teacher"]))
    try:
        log.info("resuming run %s", run_id)
        return execute_run(store, run, pack_obj, runtime, progress)
    finally:
        runtime.close()


def _spec_from_identity(identity: dict) -> str:
    kind = identity.get("kind")
    if kind == "llamacpp":
        spec = "embedded" if identity.get("model") == "embedded" else f"llamacpp:{identity['path']}"
        if identity.get("adapter"):
            spec = f"llamacpp:{identity['path']}+lora={identity['adapter']}"
        return spec
    if kind == "ollama":
        return f"ollama:{identity['model']}@{identity['base_url']}"
    if kind == "openai":
        return f"openai:{identity['model']}@{identity['base_url']}#{identity.get('api', 'chat')}"
    if kind == "hf":
        spec = f"hf:{identity['model']}"
        return spec + (f"+adapter={identity['adapter']}" if identity.get("adapter") else "")
    raise ReckonError(f"cannot rebuild the teacher from {identity}; pass --teacher")


def run_job(ctx, **params) -> dict:
    """Job entry point (kind "harness.run"): start or resume a run."""
    def progress(done: int, total: int, info: dict) -> None:
        ctx.progress(done, total, message=f"{info['task_id']}: {info['outcome']}")
        ctx.event("trace", **info)

    if params.get("resume"):
        run = resume_run(ctx.workspace, params["resume"], params.get("teacher"), progress)
    else:
        run = start_run(ctx.workspace, progress=progress, **params)
    return {"run_id": run["id"], "n_traces": run["n_traces"], "status": run["status"]}


def summarise_run(store: Store, run_id: str) -> dict:
    """Counts per outcome and per rule verdict, and token totals, for one run."""
    outcomes: dict[str, int] = {}
    rules: dict[str, dict[str, int]] = {}
    tokens = 0
    count = 0
    for row in store.rows("traces", "run_id = ?", [run_id]):
        count += 1
        outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
        tokens += (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
        for rule_id, verdict in (row["rule_verdicts"] or {}).items():
            key = {True: "passed", False: "failed", None: "n/a"}[verdict.get("passed")]
            rules.setdefault(rule_id, {"passed": 0, "failed": 0, "n/a": 0})[key] += 1
    return {"traces": count, "outcomes": outcomes, "rules": rules,
            "tokens_per_trace": round(tokens / count, 1) if count else 0}


__all__ = ["AgentLoop", "Limits", "TraceRecord", "start_run", "resume_run", "execute_run",
           "run_job", "summarise_run", "canonical_json"]
