"""The harness: run a tool pack's tasks against a teacher and record every trace.

`AgentLoop.run_task` drives one conversation: the model sees the system prompt, the tools and
the history and emits tool calls; each call's arguments are validated against the tool's JSON
Schema, the tool runs with a timeout, and its result goes back to the model, until a terminal
tool (answer, refuse, escalate), the step limit or the token limit. With `step_samples`
K > 1 each step draws up to K candidate actions and keeps the first that a step verifier
accepts (step-level rejection sampling: a weak teacher then yields far more verified traces
per minute than whole-trace sampling).

Two aids exist for teachers too weak to produce verified traces on their own. `guide`
starts each action with the tool the task expects next; `hints` adds the pack's note for the
expected call (arguments, facts to state) to the teacher's prompt only, a form of STaR-style
rationalization. The recorded trace never contains the note, and each step records the
guided tool and the hint it was given.

Every failure becomes an entry in the trace's `errors` with its kind, and never escapes as
an exception:

    unparseable_output   the output holds no parseable tool call
    unknown_tool         the call names a tool the pack does not have
    wrong_argument_type  an argument has the wrong JSON type
    invalid_arguments    any other schema violation (missing, unexpected, enum, ...)
    tool_error           the tool raised
    timeout              the tool ran past its timeout
    runtime_error        the backend failed to produce a completion
    context_overflow     the prompt does not fit, or the backend truncated it
    step_limit / token_limit
    step_rejected        step-level rejection sampling found no acceptable candidate

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
    "the form <tool_call>{\"name\": \"TOOL\", \"arguments\": {...}}</tool_call>."
)


@dataclass
class Limits:
    max_steps: int = 8
    max_total_tokens: int = 32_000


@dataclass
class Attempt:
    """One candidate action at one step: the messages it adds and what went wrong."""

    step_fields: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    terminal: str | None = None


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


def calls_made(messages: list[dict]) -> int:
    """Count the tool calls the assistant has made so far in a conversation."""
    return sum(len(m.get("tool_calls") or []) for m in messages if m["role"] == "assistant")


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
                 limits: Limits | None = None, prompt: str = "full", step_samples: int = 1,
                 guide: bool = False, hints: bool = False):
        self.pack = pack
        # Guided sampling starts each action with the tool name that the task's
        # `expected.calls` lists next; the model writes the arguments and answers, and a
        # runtime that supports it constrains them to the tool's JSON Schema.
        self.guide = guide
        if guide and not runtime.supports_prefix:
            raise ReckonError(f"guided sampling needs a completion runtime; {runtime.kind} "
                              "applies its own chat template")
        # Hints (STaR-style rationalization): the teacher's prompt gets a note from the
        # pack's step_hint, written from the task's expectations, after the latest turn.
        # The recorded trace never contains the note, so training examples are the plain
        # conversation; each step records the hint it was given.
        if hints and pack.step_hint is None:
            raise ReckonError(f"pack {pack.id} has no step_hint, so hints cannot be used")
        self.hints = hints
        # NOTE: with step_samples > 1 the tool calls of rejected candidates are executed
        # too, which is only safe for tools without side effects (true of the shipped pack).
        self.step_samples = max(1, step_samples)
        self.runtime = runtime
        self.sampling = sampling
        self.limits = limits or Limits()
        if prompt not in pack.prompts:
            raise ReckonError(f"pack {pack.id} has no prompt {prompt!r}; it has "
                              f"{', '.join(sorted(pack.prompts))}")
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
            attempt, ended = self._step(task, messages, step, sampling, record, step_record)
            if ended:
                break
            if self.step_samples > 1 and len(step_record.get("rejections", [])) == self.step_samples:
                # Every candidate failed the step verifier: the trace cannot verify, so
                # stop here instead of spending the remaining steps on it.
                messages.extend(attempt.messages)
                record.errors.extend(attempt.errors)
                step_record.update(attempt.step_fields)
                self._fail(record, step_record, "step_rejected",
                           f"all {self.step_samples} candidates rejected; last: "
                           f"{step_record['rejections'][-1]}")
                record.outcome = "step_rejected"
                break
            record.errors.extend(attempt.errors)
            step_record.update(attempt.step_fields)
            if attempt.errors:
                step_record["errors"] = [{"kind": e["kind"], "message": e["message"]}
                                         for e in attempt.errors]
            messages.extend(attempt.messages)
            if attempt.terminal is not None:
                record.outcome = outcome_of(attempt.terminal)
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

    def _step(self, task: dict, messages: list[dict], step: int, sampling: Sampling,
              record: TraceRecord, step_record: dict) -> tuple["Attempt | None", bool]:
        """Draw up to `step_samples` candidate actions and keep the first the verifier accepts.

        Returns (attempt, ended); ended is True when the backend failed and the trace is over.
        With step_samples == 1 the first candidate is always kept.
        """
        rejections: list[str] = []
        attempt = None
        expected_tool, calls_so_far = self._next_expected_call(task, messages)
        guided_tool = expected_tool if self.guide else None
        prefix = None
        if guided_tool is not None:
            step_record["guided_tool"] = guided_tool
            # Ends at '"arguments":', a token boundary in the Gemma vocabulary, so the model
            # continues with ' {"' exactly as the full rendering tokenizes.
            prefix = f' <tool_call>{{"name": "{guided_tool}", "arguments":'
        prompt_messages = messages
        hint = self._hint(task, expected_tool, calls_so_far)
        if hint:
            step_record["hint"] = hint
            prompt_messages = messages + [{"role": "system", "content": hint}]
        sampling_tokens = 0
        for candidate in range(self.step_samples):
            candidate_sampling = sampling
            if candidate > 0:
                # Later candidates are sampled, each with its own seed, so they differ.
                candidate_sampling = Sampling(**{**sampling.to_dict(),
                                                 "temperature": max(sampling.temperature, 0.8),
                                                 "seed": sampling.seed + 104729 * candidate})
            # With several candidates the first decodes freely: a grammar costs about 3x
            # per token on llama.cpp and a guided teacher rarely needs it. Candidates drawn
            # after a rejection, or a lone candidate, are constrained to the tool's schema
            # where the runtime can.
            constrain = candidate > 0 or self.step_samples == 1
            schema = self._guide_schema(guided_tool) if constrain else None
            try:
                generation = self.runtime.chat(prompt_messages, self.tools, candidate_sampling,
                                               prefix, schema)
            except ContextOverflow as error:
                self._fail(record, step_record, "context_overflow", str(error))
                record.outcome = "context_overflow"
                return None, True
            except RuntimeFailure as error:
                self._fail(record, step_record, "runtime_error", str(error))
                record.outcome = "runtime_error"
                return None, True
            if attempt is not None:
                sampling_tokens += generation_tokens
            generation_tokens = generation.prompt_tokens + generation.completion_tokens
            attempt = self._attempt(generation, messages, step)
            if self.step_samples == 1:
                break
            reason = self._reject_reason(task, messages, attempt)
            if reason is None:
                break
            rejections.append(reason)
        # The trace's token counts are those of the kept actions (what serving would cost);
        # the rejected candidates' tokens are recorded per step as sampling cost.
        record.prompt_tokens += attempt.step_fields["prompt_tokens"]
        record.completion_tokens += attempt.step_fields["completion_tokens"]
        if self.step_samples == 1:
            return attempt, False
        step_record["sampling_tokens"] = sampling_tokens
        # When every candidate was rejected the last one is kept, and the trace will fail
        # verification in curation with the same reason.
        step_record["candidates"] = min(len(rejections) + 1, self.step_samples)
        step_record["rejections"] = rejections
        return attempt, False

    def _guide_schema(self, guided_tool: str | None) -> dict | None:
        """Return the guided tool's argument schema, used to constrain decoding where supported."""
        if guided_tool is None or not self.runtime.supports_constraints:
            return None
        tool = self.pack.tools.get(guided_tool)
        return tool.parameters if tool is not None else None

    @staticmethod
    def _next_expected_call(task: dict, messages: list[dict]) -> tuple[str | None, int]:
        """Return the next tool in `expected.calls` (None past its end) and the calls made."""
        expected = (task.get("expected") or {}).get("calls") or []
        calls_so_far = calls_made(messages)
        next_tool = expected[calls_so_far] if calls_so_far < len(expected) else None
        return next_tool, calls_so_far

    def _hint(self, task: dict, expected_tool: str | None, calls_so_far: int) -> str | None:
        """Return the pack's hint for the next expected call, when hints are on."""
        if not self.hints or expected_tool is None:
            return None
        try:
            return self.pack.step_hint(task, expected_tool, calls_so_far)
        except Exception as error:          # a pack bug must not end the run
            log.warning("step_hint of pack %s failed on task %s: %s", self.pack.id,
                        task.get("id"), error)
            return None

    def _attempt(self, generation, messages: list[dict], step: int) -> "Attempt":
        """Turn one generation into the messages it adds, running its tool calls."""
        attempt = Attempt(step_fields={
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "latency_s": round(generation.latency_s, 4), "raw_output": generation.text,
            "finish_reason": generation.finish_reason})
        if generation.parse_error or not generation.tool_calls:
            reason = generation.parse_error or "no tool call in output"
            attempt.errors.append({"step": step, "kind": "unparseable_output", "message": reason})
            attempt.messages = [{"role": "assistant", "content": generation.text},
                                {"role": "user", "content": UNPARSEABLE_FEEDBACK}]
            return attempt
        call_message = assistant_message(generation.tool_calls, generation.content, step)
        attempt.messages.append(call_message)
        for raw_call in call_message["tool_calls"]:
            name = raw_call["function"]["name"]
            arguments = json.loads(raw_call["function"]["arguments"])
            result, error = self._execute(name, arguments)
            if error is not None:
                attempt.errors.append({"step": step, **error})
            attempt.messages.append(tool_message(raw_call["id"], name, result))
            tool = self.pack.tools.get(name)
            if tool is not None and tool.terminal and error is None:
                attempt.terminal = name
        return attempt

    def _reject_reason(self, task: dict, messages: list[dict], attempt: "Attempt") -> str | None:
        """Step verifier for step-level rejection sampling; None accepts the candidate.

        A candidate is rejected when it has any loop error, or when it calls a tool other
        than the next one in the task's `expected.calls` (if the task lists them). It is also
        rejected when the pack's step checker fails one of its calls, or when it ends the
        trace and a rule checker or the task checker then fails.
        """
        if attempt.errors:
            return f"{attempt.errors[0]['kind']}: {attempt.errors[0]['message']}"[:200]
        expected = (task.get("expected") or {}).get("calls")
        if expected:
            made = calls_made(messages)
            for offset, message in enumerate(m for m in attempt.messages if m["role"] == "assistant"):
                for index, call in enumerate(message.get("tool_calls") or []):
                    position = made + index
                    name = call["function"]["name"]
                    if position >= len(expected) or expected[position] != name:
                        wanted = expected[position] if position < len(expected) else "(no more calls)"
                        return f"called {name}, expected {wanted}"
        if self.pack.step_checker is not None:
            view = TraceView(task, messages + attempt.messages)
            made = len(TraceView(task, messages).calls)
            for record in view.calls[made:]:
                verdict = self.pack.step_checker(view, record)
                if verdict.passed is False:
                    return f"step: {verdict.reason}"[:200]
        if attempt.terminal is not None:
            view = TraceView(task, messages + attempt.messages, outcome_of(attempt.terminal))
            for rule_id, verdict in self.pack.verdicts(view).items():
                if verdict["passed"] is False:
                    return f"{rule_id}: {verdict['reason']}"[:200]
        return None

    def _execute(self, name: str, arguments: dict) -> tuple[dict, dict | None]:
        """Run one tool call; return (result for the model, error entry or None)."""
        tool = self.pack.tools.get(name)
        if tool is None:
            message = f"unknown tool {name!r}; available tools: {', '.join(self.pack.tools)}"
            return {"error": message}, {"kind": "unknown_tool", "message": message}

        errors = sorted(self.validators[name].iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            kind = "wrong_argument_type" if first.validator == "type" else "invalid_arguments"
            where = ".".join(str(p) for p in first.path) or "(arguments)"
            message = f"{name}: {where}: {first.message}"
            return {"error": message}, {"kind": kind, "message": message}

        context = self.context()
        future = self._executor.submit(tool.function, context, **arguments)
        try:
            value = future.result(timeout=tool.timeout_s)
        except concurrent.futures.TimeoutError:
            # NOTE: a Python thread cannot be killed; a tool that never returns keeps its
            # worker thread busy until the process exits.
            message = f"{name} timed out after {tool.timeout_s:g} s"
            return {"error": message}, {"kind": "timeout", "message": message}
        except ToolError as error:
            return {"error": str(error)}, {"kind": "tool_error", "message": f"{name}: {error}"}
        except Exception as error:  # noqa: BLE001 - a crashing tool is recorded, not raised
            log.warning("tool %s raised %s: %s", name, type(error).__name__, error)
            message = f"{name}: {type(error).__name__}: {error}"
            return {"error": f"{type(error).__name__}: {error}"}, {"kind": "tool_error", "message": message}
        return (value if isinstance(value, dict) else {"result": value}), None

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
               concurrency: int, sampling: Sampling, limits: Limits, prompt: str,
               step_samples: int = 1, guide: bool = False, hints: bool = False) -> dict:
    run = {
        "id": new_id("run"), "pack_id": pack.id, "pack_version": pack.version,
        "pack_digest": pack.digest, "teacher": runtime.identity(), "sampling": sampling.to_dict(),
        "config": {"tasks": tasks, "samples": samples, "concurrency": concurrency,
                   "limits": limits.__dict__, "prompt": prompt, "pack_path": str(pack.path),
                   "step_samples": step_samples, "guide": guide, "hints": hints},
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
    loop = AgentLoop(pack, runtime, sampling, limits, prompt=run["config"]["prompt"],
                     step_samples=run["config"].get("step_samples", 1),
                     guide=run["config"].get("guide", False),
                     hints=run["config"].get("hints", False))
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
              task_source: str | None = None, step_samples: int = 1, guide: bool = False,
              hints: bool = False, progress: Callable[[int, int, dict], None] | None = None) -> dict:
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
                         limits=Limits(max_steps=max_steps), prompt=prompt,
                         step_samples=step_samples, guide=guide, hints=hints)
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
