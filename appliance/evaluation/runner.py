"""The eval runner: evaluate one model configuration on a frozen eval set and store the result.

A configuration is a runtime spec (see appliance.runtimes), the pack prompt kind (full or
compact), the tool listing style (full, compact or none) and decoding settings. Each case
is evaluated in up to two parts (`mode`):

    first_decision  BFCL-style: the system prompt and the case's question, one generation,
                    checked against the case's first expected call (ground_truth, or
                    expected_calls[0]). Cases are generated in batches (runtime.chat_batch).
    task            the harness's AgentLoop runs the case's task live with the pack's real
                    tools. The whole call sequence is checked against ground_truth or
                    expected_calls, and the pack's rule checkers and task checker give
                    rule_verdicts. Tokens per task are summed over all steps of the loop.

`evaluate` returns a result dict in the schema of appliance.evaluation.metrics, plus

    label, pack {id, version, digest}, mode, primary_part,
    parts {first_decision|task: {"cases": [...], "summary": {...}}},
    summary {part: summary}, timing {part: seconds}

Its `cases` are the primary part's cases: task when it ran, else first_decision, so that
`compare` and other readers of the plain schema see one set of cases. The result is written
to <workspace>/artifacts/evals/<id>.json and one row goes into the `eval_results` table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from appliance.chat import ToolCall
from appliance.errors import NotFoundError, ReckonError
from appliance.evaluation.checker import CaseResult, CheckOptions, ModelOutput, check_case
from appliance.evaluation.evalset import (EvalCase, EvalSet, freeze_evalset, load_frozen)
from appliance.evaluation.metrics import RESULT_SCHEMA, EvalResult, summarize
from appliance.harness import AgentLoop, Limits, TraceRecord, outcome_of
from appliance.packs import Pack, load_pack
from appliance.runtimes import (ContextOverflow, Generation, Runtime, RuntimeFailure, Sampling,
                                make_runtime)
from appliance.store import Store, new_id, now
from appliance.workspace import Workspace

log = logging.getLogger(__name__)

RESULTS_TABLE = "eval_results"
FIRST_DECISION = "first_decision"
TASK = "task"
PARTS = (FIRST_DECISION, TASK)
MODES = {"first": (FIRST_DECISION,), "task": (TASK,), "both": (FIRST_DECISION, TASK)}
PROMPT_KINDS = ("full", "compact")
TOOL_STYLES = ("full", "compact", "none")
DEFAULT_PACK = "entitlements"

# Loop endings that mean the model ran out of budget before a terminal tool.
LIMIT_OUTCOMES = ("step_limit", "token_limit")

Progress = Callable[[int, int, dict], None]


def ensure_results_table(store: Store) -> None:
    store.ensure_table(RESULTS_TABLE, {
        "id": str, "label": str, "evalset_digest": str, "evalset_name": str,
        "pack_id": str, "pack_digest": str,
        "identity": str,           # JSON: runtime.identity() (weights and adapter digests)
        "settings": str,           # JSON: prompt, tool style, renderer, sampling, prompt hash
        "summary": str,            # JSON: {part: metrics.summarize(...)}
        "mode": str, "n_cases": int, "path": str, "created_at": float,
    }, indexes=[["evalset_digest"], ["created_at"]])


# -- inputs --------------------------------------------------------------------------------


def resolve_evalset(workspace: Workspace, ref: str | os.PathLike) -> EvalSet:
    """Load a frozen eval set by name or digest; a .jsonl file is frozen first.

    Loading verifies the frozen copy against its digest, so a modified copy raises
    EvalSetTamperedError instead of being evaluated.
    """
    path = Path(ref)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise NotFoundError(f"eval set file {path} not found; give a .jsonl file or the "
                                "name of a frozen set (`reckon evalset list`)")
        return freeze_evalset(path, workspace)
    return load_frozen(workspace, str(ref))


def resolve_pack(pack: str | Pack | None, evalset: EvalSet | None) -> Pack:
    """Use the given pack, else the one the eval set's manifest names, else the shipped one."""
    if isinstance(pack, Pack):
        return pack
    if pack is None:
        metadata = ((evalset.manifest if evalset else None) or {}).get("metadata") or {}
        pack = metadata.get("pack_path") or metadata.get("pack") or DEFAULT_PACK
    return load_pack(pack)


def prompt_hash(runtime: Runtime, system_prompt: str, tools: list[dict]) -> str:
    """SHA-256 of the system turn as sent: the system prompt plus the tool listing."""
    rendered = runtime.renderer.render([{"role": "system", "content": system_prompt}], tools).text
    return "sha256:" + hashlib.sha256(rendered.encode("utf-8")).hexdigest()


def check_options(pack: Pack) -> CheckOptions:
    """Read refusal and escalation tools off the pack's terminal tools, as the harness does."""
    refusal = frozenset(name for name in pack.terminal_tools if outcome_of(name) == "refuse")
    escalation = frozenset(name for name in pack.terminal_tools if outcome_of(name) == "escalate")
    return CheckOptions(refusal_tools=refusal, escalation_tools=escalation)


def case_messages(case: EvalCase, system_prompt: str) -> list[dict]:
    """Return the case's messages, led by the pack's system prompt unless the case has one."""
    messages = [dict(message) for message in case.messages]
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def case_task(case: EvalCase) -> dict:
    """Return the task for the AgentLoop: the case's task, or one built from its last user turn."""
    if case.task is not None:
        return dict(case.task)
    users = [message for message in case.messages if message.get("role") == "user"]
    if not users:
        raise ReckonError(f"eval case {case.id!r} (line {case.line}) has no user message and no "
                          "task; the multi-step part needs a request to run")
    return {"id": case.id, "request": users[-1].get("content") or "",
            "category": case.category, "expected": {}}


# -- first decision ------------------------------------------------------------------------


def first_decision_case(case: EvalCase, pack: Pack) -> EvalCase:
    """Derive the one-call case that checks only the first expected call.

    A multi-step case's first call is usually a lookup, so its expected outcome becomes
    "answer" unless that first call is itself a terminal tool (refuse, escalate).
    """
    if not case.expected_calls:
        return case
    data = dict(case.data)
    first = data.pop("expected_calls")[0]
    data["ground_truth"] = [first]
    ((name, _),) = first.items()
    if name not in pack.terminal_tools:
        data["expected_outcome"] = "answer"
    return EvalCase.from_dict(data, case.line, case.evalset_digest)


def _generate(runtime: Runtime, conversations: list[tuple[list[dict], list[dict]]],
              sampling: Sampling) -> list[Generation | Exception]:
    """Generate a batch; when the batch fails, retry one by one so one bad case stays local."""
    try:
        return list(runtime.chat_batch(conversations, sampling))
    except (ContextOverflow, RuntimeFailure) as error:
        log.warning("batch of %d failed (%s: %s); generating one at a time",
                    len(conversations), type(error).__name__, error)
    results: list[Generation | Exception] = []
    for messages, tools in conversations:
        try:
            results.append(runtime.chat(messages, tools, sampling))
        except (ContextOverflow, RuntimeFailure) as error:
            results.append(error)
    return results


def run_first_decision(cases: list[EvalCase], runtime: Runtime, pack: Pack, system_prompt: str,
                       sampling: Sampling, batch_size: int,
                       progress: Progress | None = None) -> list[CaseResult]:
    """Generate one decision per case, batch_size cases at a time, and check each."""
    tools = pack.openai_tools()
    options = check_options(pack)
    results: list[CaseResult] = []
    for start in range(0, len(cases), batch_size):
        batch = cases[start:start + batch_size]
        conversations = [(case_messages(case, system_prompt), tools) for case in batch]
        for case, generation in zip(batch, _generate(runtime, conversations, sampling)):
            results.append(check_first_decision(case, generation, pack, options))
            if progress is not None:
                progress(len(results), len(cases), {"part": FIRST_DECISION, "case_id": case.id,
                                                    "passed": results[-1].passed})
    return results


def check_first_decision(case: EvalCase, generation: Generation | Exception, pack: Pack,
                 options: CheckOptions) -> CaseResult:
    derived = first_decision_case(case, pack)
    if isinstance(generation, Exception):
        # NOTE: a backend failure is scored as unparseable output, the checker's only
        # category for "no usable output"; output.runtime_error names the real cause.
        output = ModelOutput(error=f"{type(generation).__name__}: {generation}")
        result = check_case(derived, output, functions=pack.tools, options=options)
        result.output["runtime_error"] = str(generation)
    else:
        output = ModelOutput(calls=list(generation.tool_calls), error=generation.parse_error,
                             content=generation.content)
        result = check_case(derived, output, functions=pack.tools, options=options,
                            prompt_tokens=generation.prompt_tokens,
                            completion_tokens=generation.completion_tokens)
        result.output.update(raw_output=generation.text, finish_reason=generation.finish_reason)
    # The derived case checks a single step, so it never counts towards task success.
    result.multi_step = False
    return result


# -- multi-step task -----------------------------------------------------------------------


def trace_calls(record: TraceRecord) -> list[ToolCall]:
    """Return every tool call the model made over the loop, in order."""
    calls = []
    for message in record.messages:
        if message.get("role") == "assistant":
            calls.extend(ToolCall.from_openai(raw) for raw in message.get("tool_calls") or [])
    return calls


def task_output(record: TraceRecord) -> ModelOutput:
    """Read a finished loop as the checker's ModelOutput.

    `error` is set only when the last step could not be parsed, because the checker fails
    a case with an error even when the model recovered on a later step. Format errors of
    earlier steps are flagged on the CaseResult instead (see `check_task`).
    """
    outcome: str | None = record.outcome if record.outcome in ("answer", "refuse", "escalate") else None
    if record.outcome in LIMIT_OUTCOMES:
        outcome = "step_limit"
    last_errors = record.steps[-1].get("errors", []) if record.steps else []
    error = next((entry["message"] for entry in last_errors
                  if entry["kind"] in ("unparseable_output", "runtime_error", "context_overflow")),
                 None)
    content = None
    if record.steps and error:
        content = record.steps[-1].get("raw_output")
    return ModelOutput(calls=trace_calls(record), error=error, content=content, outcome=outcome)


def check_task(case: EvalCase, record: TraceRecord, pack: Pack, options: CheckOptions) -> CaseResult:
    result = check_case(case, task_output(record), functions=pack.tools, options=options,
                        rule_verdicts=record.rule_verdicts, prompt_tokens=record.prompt_tokens,
                        completion_tokens=record.completion_tokens)
    if any(error["kind"] == "unparseable_output" for error in record.errors):
        result.format_error = True
    result.output.update(loop_outcome=record.outcome, errors=record.errors,
                         steps=len(record.steps),
                         raw_outputs=[step.get("raw_output") for step in record.steps])
    return result


def run_tasks(cases: list[EvalCase], runtime: Runtime, pack: Pack, prompt: str,
              sampling: Sampling, max_steps: int,
              progress: Progress | None = None) -> list[CaseResult]:
    """Run each case's task through the AgentLoop with the pack's real tools and check it."""
    options = check_options(pack)
    loop = AgentLoop(pack, runtime, sampling, Limits(max_steps=max_steps), prompt=prompt)
    results: list[CaseResult] = []
    try:
        for case in cases:
            record = loop.run_task(case_task(case))
            results.append(check_task(case, record, pack, options))
            if progress is not None:
                progress(len(results), len(cases), {"part": TASK, "case_id": case.id,
                                                    "passed": results[-1].passed})
    finally:
        loop.close()
    return results


# -- evaluate ------------------------------------------------------------------------------


def evaluate(workspace: Workspace, *, evalset: str | os.PathLike | None = None, runtime_spec: str = "embedded",
             prompt: str = "full", tool_style: str = "full", sampling: Sampling | None = None,
             mode: str = "both", batch_size: int = 16, limit: int | None = None,
             progress: Progress | None = None, label: str | None = None,
             pack: str | Pack | None = None, max_steps: int = 8,
             runtime: Runtime | None = None) -> dict:
    """Evaluate one configuration on a frozen eval set; store and return the result dict.

    evalset: a frozen set's name or digest, or a .jsonl file to freeze first; None means
        the pack's own held-out set (frozen under its file name).
    runtime: an already built runtime to use instead of `runtime_spec` (the caller keeps
        ownership and closes it); its renderer must use `tool_style`.
    """
    _check_settings(prompt, tool_style, mode, batch_size, limit, max_steps)
    sampling = sampling or Sampling()
    if evalset is None:
        pack_obj = resolve_pack(pack or DEFAULT_PACK, None)
        if pack_obj.evalset_path is None:
            raise ReckonError(f"pack {pack_obj.id} ships no eval set; pass --evalset")
        frozen = freeze_evalset(pack_obj.evalset_path, workspace,
                                metadata={"pack": pack_obj.id, "pack_path": str(pack_obj.path)})
    else:
        frozen = resolve_evalset(workspace, evalset)
        pack_obj = resolve_pack(pack, frozen)
    if prompt not in pack_obj.prompts:
        raise ReckonError(f"pack {pack_obj.id} has no {prompt!r} prompt; it has "
                          f"{', '.join(sorted(pack_obj.prompts))}")
    cases = stratified_cases(frozen.cases, limit) if limit else list(frozen.cases)

    owned = runtime is None
    if runtime is None:
        runtime = make_runtime(runtime_spec, tool_style=tool_style)
    elif runtime.renderer.tool_style != tool_style:
        raise ReckonError(f"the given runtime lists tools in style {runtime.renderer.tool_style!r}, "
                          f"the evaluation asks for {tool_style!r}")
    try:
        system_prompt = pack_obj.prompts[prompt]
        identity = runtime.identity()
        settings = {
            "runtime_spec": runtime_spec if owned else None, "prompt": prompt,
            "tool_style": tool_style, "renderer": runtime.renderer.name,
            "prompt_sha256": prompt_hash(runtime, system_prompt, pack_obj.openai_tools()),
            "sampling": sampling.to_dict(), "mode": mode, "batch_size": batch_size,
            "max_steps": max_steps, "limit": limit,
        }
        log.info("eval of %s on %s (%d cases, mode %s) started", identity.get("model"),
                 frozen.digest, len(cases), mode)
        parts: dict[str, list[CaseResult]] = {}
        timing: dict[str, float] = {}
        for part in MODES[mode]:
            started = time.perf_counter()
            if part == FIRST_DECISION:
                parts[part] = run_first_decision(cases, runtime, pack_obj, system_prompt,
                                                 sampling, batch_size, progress)
            else:
                parts[part] = run_tasks(cases, runtime, pack_obj, prompt, sampling, max_steps,
                                        progress)
            timing[part] = round(time.perf_counter() - started, 3)
    finally:
        if owned:
            runtime.close()

    result = build_result(frozen, pack_obj, identity, settings, parts, timing, label)
    store_result(workspace, result)
    log.info("eval %s stored (%d cases)", result["id"], len(cases))
    return result


def stratified_cases(cases: list, limit: int) -> list:
    """Pick `limit` cases round-robin over categories, in file order within each.

    Eval sets are often written one category at a time, so the first N cases would
    measure one category only.
    """
    by_category: dict[str, list] = {}
    for case in cases:
        by_category.setdefault(case.category or "", []).append(case)
    picked = []
    depth = 0
    while len(picked) < limit and any(depth < len(group) for group in by_category.values()):
        for group in by_category.values():
            if depth < len(group) and len(picked) < limit:
                picked.append(group[depth])
        depth += 1
    order = {id(case): index for index, case in enumerate(cases)}
    return sorted(picked, key=lambda case: order[id(case)])


def _check_settings(prompt: str, tool_style: str, mode: str, batch_size: int,
                    limit: int | None, max_steps: int) -> None:
    if prompt not in PROMPT_KINDS:
        raise ReckonError(f"prompt must be one of {', '.join(PROMPT_KINDS)}, got {prompt!r}")
    if tool_style not in TOOL_STYLES:
        raise ReckonError(f"tool style must be one of {', '.join(TOOL_STYLES)}, got {tool_style!r}")
    if mode not in MODES:
        raise ReckonError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if batch_size < 1:
        raise ReckonError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ReckonError(f"limit must be at least 1 case, got {limit}")
    if max_steps < 1:
        raise ReckonError(f"max steps must be at least 1, got {max_steps}")


def build_result(evalset: EvalSet, pack: Pack, identity: dict, settings: dict,
                 parts: dict[str, list[CaseResult]], timing: dict[str, float],
                 label: str | None) -> dict:
    primary = TASK if TASK in parts else FIRST_DECISION
    eval_id = new_id("eval")
    base = EvalResult(evalset_digest=evalset.digest, evalset_name=evalset.name, model=identity,
                      settings=settings, cases=parts[primary], id=eval_id, created_at=now())
    return {
        **base.to_dict(),
        "label": label or eval_id,
        "pack": {"id": pack.id, "version": pack.version, "digest": pack.digest},
        "mode": settings["mode"], "primary_part": primary,
        "parts": {name: {"cases": [case.to_dict() for case in cases], "summary": summarize(cases)}
                  for name, cases in parts.items()},
        "summary": {name: summarize(cases) for name, cases in parts.items()},
        "timing": timing,
    }


# -- storage -------------------------------------------------------------------------------


def results_dir(workspace: Workspace) -> Path:
    path = Path(workspace.artifacts) / "evals"
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_result(workspace: Workspace, result: dict) -> Path:
    """Write the full result JSON, then its row; the row points at the file."""
    path = results_dir(workspace) / f"{result['id']}.json"
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(result, ensure_ascii=False, indent=1, sort_keys=True),
                       encoding="utf-8")
    os.replace(staging, path)
    store = workspace.store()
    ensure_results_table(store)
    store.insert(RESULTS_TABLE, {
        "id": result["id"], "label": result["label"],
        "evalset_digest": result["evalset"]["digest"], "evalset_name": result["evalset"]["name"],
        "pack_id": result["pack"]["id"], "pack_digest": result["pack"]["digest"],
        "identity": result["model"], "settings": result["settings"], "summary": result["summary"],
        "mode": result["mode"], "n_cases": len(result["cases"]), "path": str(path),
        "created_at": result["created_at"],
    })
    return path


def list_results(workspace: Workspace) -> list[dict]:
    """Return the stored result rows, newest first."""
    store = workspace.store()
    ensure_results_table(store)
    return list(store.rows(RESULTS_TABLE, order_by="created_at desc"))


def load_result(workspace: Workspace, ref: str) -> dict:
    """Load a stored result by id, unique id prefix or label, or from a result JSON file."""
    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        return _read_result(path)
    rows = list_results(workspace)
    exact = [row for row in rows if row["id"] == ref]
    matches = exact or [row for row in rows if row["label"] == ref] \
        or [row for row in rows if row["id"].startswith(ref)]
    if not matches:
        raise NotFoundError(f"eval result {ref!r} not found; `reckon eval list` shows results")
    if len(matches) > 1:
        ids = ", ".join(row["id"] for row in matches[:5])
        raise ReckonError(f"eval result reference {ref!r} matches {len(matches)} results ({ids}); "
                          "give the full id")
    return _read_result(Path(matches[0]["path"]))


def _read_result(path: Path) -> dict:
    if not path.is_file():
        raise NotFoundError(f"eval result file {path} not found; it was moved or deleted")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReckonError(f"eval result file {path} is not valid JSON: {error.msg} at line "
                          f"{error.lineno}") from None
    if not isinstance(data, dict) or data.get("schema") != RESULT_SCHEMA:
        raise ReckonError(f"eval result file {path} is not a {RESULT_SCHEMA} result")
    return data


def part_view(result: dict, part: str) -> dict:
    """Return the result with `cases` taken from one part, for `compare` and `summarize`."""
    parts = result.get("parts") or {}
    if part not in parts:
        available = ", ".join(parts) or "none"
        raise ReckonError(f"eval result {result.get('id')} has no {part} part (it has: "
                          f"{available}); run it with --mode both")
    return {**result, "cases": parts[part]["cases"]}


def common_parts(results: Iterable[dict]) -> list[str]:
    present = [set((result.get("parts") or {}).keys()) for result in results]
    shared = set.intersection(*present) if present else set()
    return [part for part in PARTS if part in shared]


# -- job -----------------------------------------------------------------------------------


def run_job(ctx, **params: Any) -> dict:
    """Job entry point (kind "eval"): evaluate one configuration and store the result."""
    def progress(done: int, total: int, info: dict) -> None:
        verdict = "pass" if info["passed"] else "fail"
        ctx.progress(done, total, message=f"{info['part']}: {info['case_id']} {verdict}",
                     part=info["part"])

    sampling = Sampling.from_dict(params.pop("sampling", None))
    result = evaluate(ctx.workspace, sampling=sampling, progress=progress, **params)
    return {"eval_id": result["id"], "label": result["label"], "n_cases": len(result["cases"]),
            "summary": result["summary"]}
