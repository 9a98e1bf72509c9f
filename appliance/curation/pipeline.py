"""The curation funnel: recorded traces in, a verified, masked, versioned dataset out.

Stages and the count each reports:
    traces in -> verified -> selected -> split (one example per decision) -> deduplicated
    -> leakage dropped -> balanced -> rendered

`plan` runs everything up to balancing in one streaming pass over SQLite, ordered by task,
so that no more than one task's messages are decoded at a time. It keeps only compact
records (ids, hashes, categories) of the selected traces. `build` then re-reads the kept
traces by id, renders and tokenises them and writes the dataset folder.
With `workers` > 1 the verification of task groups runs in forked worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from appliance.chat import ArgumentsError
from appliance.errors import NotFoundError, ReckonError
from appliance.packs import Pack, load_pack
from appliance.store import Store, now
from appliance.curation import balance as balancing
from appliance.curation import dataset as datasets
from appliance.curation import dedup, review, verify
from appliance.curation.select import Candidate, select
from appliance.curation.split import TRAIN, VALIDATION, action_tool, decision_indices, split_of

log = logging.getLogger(__name__)

GROUP_BATCH = 256          # tasks per range that a worker reads and verifies
VERDICT_FLUSH = 20_000     # verdict rows per insert transaction


@dataclass
class CurationConfig:
    runs: list[str] | None = None          # None: every run in the store
    pack: str | None = None                # pack name or folder; default: the runs' pack
    base: str = "embedded"
    max_length: int = 1024
    per_task: int = 2                      # verified samples kept per task
    validation_fraction: float = 0.1
    split_seed: str = ""
    near_duplicate_threshold: float = dedup.NEAR_DUPLICATE_THRESHOLD
    leakage_threshold: float = dedup.LEAKAGE_THRESHOLD
    floors: list[str] = field(default_factory=list)   # "outcome=escalate:50"
    caps: list[str] = field(default_factory=list)     # "tool=lookup_rate:400"
    max_repeat: int = balancing.DEFAULT_MAX_REPEAT
    prompt_kind: str = "compact"
    tool_style: str = "compact"
    workers: int = 1
    # Keep the step-verified decisions of traces that step-level rejection sampling stopped
    # (each passed the step verifier, the rules hold on the prefix), for tasks without a
    # verified whole trace.
    verified_prefixes: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- records kept between the passes -------------------------------------------------------------


@dataclass(slots=True)
class ExampleRecord:
    trace_id: str
    task_id: str
    decision_index: int
    tool: str
    outcome: str
    rules: tuple[str, ...]
    digest: bytes
    variant: str
    split: str = TRAIN
    repeat: int = 1

    @property
    def key(self) -> str:
        return f"{self.trace_id}#{self.decision_index}"


@dataclass(slots=True)
class SelectedTrace:
    trace_id: str
    task_id: str
    run_id: str
    variant: str
    request: str
    examples: list[ExampleRecord]


@dataclass
class Plan:
    config: CurationConfig
    pack: Pack
    runs: list[str]
    funnel: dict[str, int]
    filters: list[dict]
    verification: dict
    examples: list[ExampleRecord]
    balance: dict
    leakage: dict
    timings: dict[str, float]


# -- streaming verification and selection --------------------------------------------------------

TRACE_COLUMNS = ("id", "task_id", "run_id", "sample_index", "task", "messages", "outcome",
                 "errors", "steps", "rule_verdicts", "pack_digest")


def _loads(text: Any) -> Any:
    if text is None or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text     # left as text so that verification rejects it with a reason


class _GroupProcessor:
    """Verifies and selects within one task group. Lives in each worker process."""

    def __init__(self, pack: Pack, reviews: dict[str, review.Decision], per_task: int,
                 verified_prefixes: bool = False):
        self.pack = pack
        self.verifier = verify.Verifier(pack)
        self.reviews = reviews
        self.per_task = per_task
        self.verified_prefixes = verified_prefixes
        self.moment = now()

    def process(self, rows: list[tuple]) -> tuple[list[tuple], Counter, list[SelectedTrace]]:
        verdict_rows: list[tuple] = []
        counts: Counter = Counter()
        candidates: list[Candidate] = []
        prefix_candidates: list[Candidate] = []
        details: dict[str, tuple] = {}
        key_cache: dict = {}
        # Identical samples (a greedy teacher repeats itself) are verified once.
        verdict_cache: dict[tuple, verify.Verdict] = {}
        for row in rows:
            (trace_id, task_id, run_id, _sample, task_text, messages_text, outcome,
             errors_text, steps_text, stored_text, trace_digest) = row
            counts["traces_in"] += 1
            if trace_digest != self.pack.digest:
                counts["pack_digest_differs"] += 1
            decision = self.reviews.get(trace_id)
            task = _loads(task_text)
            messages = _loads(messages_text)
            variant = verify.ORIGINAL
            # Most traces have no errors: skip decoding what cannot hold an error entry.
            errors = _loads(errors_text) if errors_text not in (None, "", "[]") else []
            steps = _loads(steps_text) if steps_text and '"kind"' in steps_text else []
            if decision is not None and decision.messages is not None:
                # The harness errors describe the original conversation, not the edit.
                messages, variant, errors, steps = decision.messages, decision.edit_id, None, None
            content_key = None
            if variant == verify.ORIGINAL:
                # The stored texts themselves are the key: Python caches a string's hash,
                # and a hit compares the texts, so no digest of 10+ KB per trace is needed.
                content_key = (task_text, messages_text, outcome, errors_text,
                               steps_text if steps else "")
            verdict = verdict_cache.get(content_key) if content_key else None
            if verdict is None:
                verdict = self.verifier.verify(task, messages, outcome, errors, steps,
                                               parse_in_place=variant == verify.ORIGINAL)
                if content_key:
                    verdict_cache[content_key] = verdict
            else:
                counts["identical_samples"] += 1
            verdict_rows.append(verify.verdict_row(trace_id, variant, self.pack.digest,
                                                   verdict, self.moment))
            counts[f"stage.{verdict.stage}"] += 1
            for reason in verdict.reasons:
                counts[f"reason.{reason.stage}.{reason.code}"] += 1
            if verdict.stage in ("policy", verify.COMPLETE):
                stored = _loads(stored_text)
                if isinstance(stored, dict) and any(
                        isinstance(stored.get(rule_id), dict)
                        and stored[rule_id].get("passed") != passed
                        for rule_id, passed in verdict.rules.items()):
                    counts["stored_verdicts_disagree"] += 1

            included = verdict.verified
            if decision is not None:
                if decision.status == "rejected":
                    counts["review_rejected"] += 1
                    included = False
                elif decision.override and not verdict.verified:
                    counts["review_override_included"] += 1
                    included = True
            if included and not _usable(messages):
                # An override cannot make an undecodable conversation into examples.
                counts["review_override_unusable"] += 1
                included = False
            if not included:
                if (self.verified_prefixes and decision is None and variant == verify.ORIGINAL
                        and outcome == "step_rejected" and _usable(messages)):
                    prefix = verify.step_verified_prefix(messages, errors)
                    if prefix:
                        prefix_verdict = self.verifier.verify_prefix(task, prefix)
                        verdict_rows.append(verify.verdict_row(
                            trace_id, verify.PREFIX, self.pack.digest, prefix_verdict,
                            self.moment))
                        if prefix_verdict.verified:
                            counts["verified_prefixes"] += 1
                            keys = dedup.message_keys(prefix, key_cache)
                            prefix_candidates.append(self._candidate(trace_id, prefix, keys))
                            details[trace_id] = (task_id, run_id, verify.PREFIX, task, prefix,
                                                 outcome, keys, prefix_verdict.rules)
                continue
            counts["included"] += 1
            keys = dedup.message_keys(messages, key_cache)
            candidates.append(self._candidate(trace_id, messages, keys))
            details[trace_id] = (task_id, run_id, variant, task, messages, outcome, keys,
                                 verdict.rules)

        # A task's verified whole traces win; its verified prefixes count only without one.
        chosen = select(candidates, self.per_task)
        if not chosen and prefix_candidates:
            chosen = select(prefix_candidates, self.per_task)
            counts["prefixes_selected"] += len(chosen)
        selected = []
        for candidate in chosen:
            task_id, run_id, variant, task, messages, outcome, keys, rules = details[candidate.trace_id]
            selected.append(self._selected(candidate.trace_id, task_id, run_id, variant, task,
                                           messages, outcome, keys, rules, counts))
        counts["selected"] += len(selected)
        return verdict_rows, counts, selected

    @staticmethod
    def _candidate(trace_id: str, messages: list[dict], keys: list[bytes]) -> Candidate:
        actions = [index for index, message in enumerate(messages)
                   if message.get("role") == "assistant"]
        signature = tuple(hashlib.blake2b(keys[index], digest_size=8).digest()
                          for index in actions)
        characters = sum(len(keys[index]) for index in actions)
        return Candidate(trace_id, len(actions), characters, signature)

    def _selected(self, trace_id, task_id, run_id, variant, task, messages, outcome, keys,
                  rules, counts) -> SelectedTrace:
        indices = decision_indices(messages)
        if len(indices) < sum(1 for m in messages if m.get("role") == "assistant"):
            counts["assistant_turns_before_request"] += 1
        hashes = dedup.example_hashes(messages, indices, keys)
        applied = tuple(sorted(rule_id for rule_id, passed in rules.items()
                               if passed is not None and rule_id != "task"))
        request = task.get("request") if isinstance(task, dict) else None
        if not isinstance(request, str) or not request.strip():
            request = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
        # The balance category is the expected outcome where the task names one: the
        # harness records a "silent" answer as outcome "answer", the task says "silent".
        expected = task.get("expected") if isinstance(task, dict) else None
        category = expected.get("outcome") if isinstance(expected, dict) else None
        category = category if isinstance(category, str) and category else (outcome or "")
        examples = [ExampleRecord(trace_id, task_id, index, action_tool(messages[index]),
                                  category, applied, hashes[index], variant)
                    for index in indices]
        return SelectedTrace(trace_id, task_id, run_id, variant, request, examples)


def _usable(messages: Any) -> bool:
    """Whether messages can be split and rendered: a list of dicts with string roles."""
    return isinstance(messages, list) and all(
        isinstance(message, dict) and isinstance(message.get("role"), str)
        for message in messages)


# Worker state, set before the pool forks: the processor and the database path. Each
# worker reads its own task ranges, so trace rows never pass through the parent.
_WORKER: _GroupProcessor | None = None
_WORKER_DB: str | None = None
_WORKER_RUNS: list[str] | None = None
_WORKER_CONNECTION: sqlite3.Connection | None = None


def _worker_process(task_range: tuple) -> list:
    global _WORKER_CONNECTION
    if _WORKER_CONNECTION is None:
        _WORKER_CONNECTION = sqlite3.connect(f"file:{_WORKER_DB}?mode=ro", uri=True,
                                             timeout=30)
    groups = _task_groups(_WORKER_CONNECTION, _WORKER_RUNS, task_range)
    return [_WORKER.process(group) for group in groups]


def _task_ranges(connection: sqlite3.Connection, runs: list[str] | None,
                 size: int) -> Iterator[tuple]:
    """Yield (first, last) task id ranges of `size` tasks; ("null",) for traces without one."""
    sql = "select distinct task_id from traces"
    params: list[Any] = []
    if runs is not None:
        sql += f" where run_id in ({', '.join('?' for _ in runs)})"
        params = list(runs)
    cursor = connection.execute(sql + " order by task_id", params)
    batch: list[str] = []
    for (task_id,) in cursor:
        if task_id is None:
            yield ("null",)
            continue
        batch.append(task_id)
        if len(batch) >= size:
            yield (batch[0], batch[-1])
            batch = []
    if batch:
        yield (batch[0], batch[-1])


def _task_groups(connection: sqlite3.Connection, runs: list[str] | None,
                 task_range: tuple | None = None) -> Iterator[list[tuple]]:
    """Yield the traces of one task at a time, in task order, sorted by run and sample."""
    sql = f"select {', '.join(TRACE_COLUMNS)} from traces"
    clauses: list[str] = []
    params: list[Any] = []
    if runs is not None:
        clauses.append(f"run_id in ({', '.join('?' for _ in runs)})")
        params.extend(runs)
    if task_range == ("null",):
        clauses.append("task_id is null")
    elif task_range is not None:
        clauses.append("task_id between ? and ?")
        params.extend(task_range)
    if clauses:
        sql += " where " + " and ".join(clauses)
    # Ordering by task_id alone lets SQLite walk the task_id index instead of sorting the
    # whole table; the few rows of one task are sorted here.
    sql += " order by task_id"
    cursor = connection.execute(sql, params)
    group: list[tuple] = []
    current = None
    while True:
        chunk = cursor.fetchmany(4096)
        if not chunk:
            break
        for row in chunk:
            if row[1] != current and group:
                yield sorted(group, key=lambda r: (r[2] or "", r[3] or 0, r[0]))
                group = []
            current = row[1]
            group.append(row)
    if group:
        yield sorted(group, key=lambda r: (r[2] or "", r[3] or 0, r[0]))


# -- run and pack resolution ---------------------------------------------------------------------


def resolve_runs(store: Store, runs: list[str] | None) -> list[str]:
    known = [row[0] for row in store.db.execute("select id from runs order by created_at, id")]
    if runs is None:
        trace_runs = [row[0] for row in store.db.execute(
            "select distinct run_id from traces order by run_id")]
        found = sorted(set(known) | set(trace_runs))
        if not found:
            raise NotFoundError("the store has no runs; record traces with `reckon run` first")
        return found
    missing = [run for run in runs if run not in known
               and not store.db.execute("select 1 from traces where run_id = ? limit 1",
                                        [run]).fetchone()]
    if missing:
        raise NotFoundError(f"run(s) not found: {', '.join(missing)}; "
                            "`reckon traces list` shows the runs")
    return list(runs)


def resolve_pack(store: Store, runs: list[str], pack: str | Pack | None) -> Pack:
    if isinstance(pack, Pack):
        return pack
    # The runs table names each run's pack; only runs without a row there (imported
    # traces) cost a look at their traces.
    placeholders = ", ".join("?" for _ in runs)
    recorded = dict(store.db.execute(
        f"select id, pack_id from runs where id in ({placeholders})", runs).fetchall())
    pack_ids = {pack_id for pack_id in recorded.values() if pack_id}
    for run in runs:
        if run not in recorded:
            row = store.db.execute("select pack_id from traces where run_id = ? limit 1",
                                   [run]).fetchone()
            if row and row[0]:
                pack_ids.add(row[0])
    pack_ids = sorted(pack_ids)
    if pack is None:
        if len(pack_ids) != 1:
            raise ReckonError(f"the runs use {len(pack_ids)} packs ({', '.join(pack_ids) or 'none'}); "
                              "curate one pack at a time or name it with --pack")
        pack = pack_ids[0]
    loaded = load_pack(pack)
    if pack_ids and pack_ids != [loaded.id]:
        raise ReckonError(f"pack {loaded.id} does not match the runs' pack(s) {', '.join(pack_ids)}")
    return loaded


# -- plan: verification to balancing -------------------------------------------------------------


def plan(store: Store, config: CurationConfig,
         progress: Callable[[int, int, str], None] | None = None) -> Plan:
    """Verify, select, split, deduplicate, guard against leakage and balance."""
    verify.ensure_tables(store)
    review.ensure_tables(store)
    floors = [balancing.parse_limit(spec, "--floor") for spec in config.floors]
    caps = [balancing.parse_limit(spec, "--cap") for spec in config.caps]
    if config.per_task < 1:
        raise ReckonError(f"per-task {config.per_task} must be at least 1")
    runs = resolve_runs(store, config.runs)
    pack = resolve_pack(store, runs, config.pack)
    placeholders = ", ".join("?" for _ in runs)
    total = store.count("traces", f"run_id in ({placeholders})", runs)
    timings: dict[str, float] = {}

    # Deduplication runs on each selected trace as it arrives, in the same order as a pass
    # after the scan would take, so it overlaps the workers' verification. Its own time is
    # reported as the dedup_leakage stage and left out of verify_select.
    started = time.perf_counter()
    deduplicator = _Deduplicator(pack, config)
    counts = _scan(store, pack, None if config.runs is None else runs, config, total, progress,
                   deduplicator.add)
    kept, dedup_filters, leakage = deduplicator.finish()
    timings["verify_select"] = time.perf_counter() - started - deduplicator.seconds
    timings["dedup_leakage"] = deduplicator.seconds

    funnel = {"traces_in": counts["traces_in"], "verified": counts["included"]}
    if config.verified_prefixes:
        funnel["verified_prefixes"] = counts["verified_prefixes"]
    funnel["selected"] = counts["selected"]
    examples_total = deduplicator.examples_in
    funnel["split"] = examples_total
    filters = [
        {"filter": "verification", "in": counts["traces_in"], "out": counts["included"]},
        {"filter": "rejection_sampling", "in": counts["included"] + counts["verified_prefixes"],
         "out": counts["selected"], "per_task": config.per_task,
         "prefixes_selected": counts["prefixes_selected"]},
        {"filter": "decision_split", "in": counts["selected"], "out": examples_total},
    ]

    filters.extend(dedup_filters)
    funnel["deduplicated"] = dedup_filters[1]["out"]
    funnel["leakage_dropped"] = leakage["examples_dropped"]

    started = time.perf_counter()
    for example in kept:
        example.split = split_of(example.task_id, config.validation_fraction, config.split_seed)
    train = [example for example in kept if example.split == TRAIN]
    validation = [example for example in kept if example.split == VALIDATION]
    timings["train_validation_split"] = time.perf_counter() - started

    started = time.perf_counter()
    items = [balancing.Item(example.key, balancing.categories_of(example.tool, example.outcome,
                                                                  example.rules))
             for example in train]
    balanced_items, balance_report = balancing.balance(items, floors, caps, config.max_repeat)
    repeats = {item.key: item.repeat for item in balanced_items}
    train = [example for example in train if example.key in repeats]
    for example in train:
        example.repeat = repeats[example.key]
    timings["balance"] = time.perf_counter() - started
    balance_dict = balance_report.to_dict()
    balance_dict["validation"] = balancing.count_categories(
        [balancing.Item(e.key, balancing.categories_of(e.tool, e.outcome, e.rules))
         for e in validation])
    filters.append({"filter": "balance", "in": len(items), "out": len(train),
                    "weighted_out": sum(example.repeat for example in train)})
    funnel["balanced"] = sum(example.repeat for example in train) + len(validation)

    verification = {key: value for key, value in sorted(counts.items())
                    if key.startswith(("stage.", "reason.")) or key in (
                        "pack_digest_differs", "stored_verdicts_disagree", "review_rejected",
                        "review_override_included", "review_override_unusable",
                        "assistant_turns_before_request", "verified_prefixes",
                        "identical_samples")}
    log.info("curation plan: %s", funnel)
    return Plan(config, pack, runs, funnel, filters, verification, train + validation,
                balance_dict, leakage, timings)


def _scan(store: Store, pack: Pack, runs: list[str] | None, config: CurationConfig, total: int,
          progress, on_selected: Callable[[SelectedTrace], None]) -> Counter:
    """Verify and select every task group, in task order; return the counts.

    Verdicts are written to trace_verdicts; each selected trace goes to `on_selected`.
    """
    global _WORKER, _WORKER_DB, _WORKER_RUNS
    reviews = review.decisions(store)
    processor = _GroupProcessor(pack, reviews, config.per_task, config.verified_prefixes)
    counts: Counter = Counter()
    pending_rows: list[tuple] = []

    def absorb(result) -> None:
        verdict_rows, group_counts, group_selected = result
        pending_rows.extend(verdict_rows)
        counts.update(group_counts)
        for trace in group_selected:
            on_selected(trace)
        if len(pending_rows) >= VERDICT_FLUSH:
            verify.write_verdicts(store, pending_rows)
            pending_rows.clear()
            if progress:
                progress(counts["traces_in"], total, "verifying")

    if config.workers > 1:
        _WORKER, _WORKER_DB, _WORKER_RUNS = processor, str(store.path), runs
        context = multiprocessing.get_context("fork")
        try:
            with context.Pool(config.workers) as pool:
                # Listed first: verdicts are written on this connection meanwhile.
                ranges = list(_task_ranges(store.db.conn, runs, GROUP_BATCH))
                for batch_results in pool.imap(_worker_process, ranges, chunksize=1):
                    for result in batch_results:
                        absorb(result)
        finally:
            _WORKER, _WORKER_DB, _WORKER_RUNS = None, None, None
    else:
        # Ranges here too: with several runs SQLite sorts each range by task, not the table.
        for task_range in list(_task_ranges(store.db.conn, runs, GROUP_BATCH)):
            for group in _task_groups(store.db.conn, runs, task_range):
                absorb(processor.process(group))
    verify.write_verdicts(store, pending_rows)
    if progress:
        progress(counts["traces_in"], total, "verified")
    return counts


class _Deduplicator:
    """Drop near-duplicate tasks, eval leakage and exact duplicate examples, trace by trace.

    Traces must arrive in task order. Near duplicates are judged by request text: samples of
    one task share a request, so the first task to claim a request keeps it and later tasks
    are dropped. Exact duplicates are judged over leaked examples too, so that a copy of a
    leaked example in another task cannot survive as a "first" occurrence.
    """

    def __init__(self, pack: Pack, config: CurationConfig):
        self.config = config
        self.pack = pack
        self.within = dedup.RequestIndex(config.near_duplicate_threshold)
        self.eval_index = dedup.RequestIndex(config.leakage_threshold)
        self.eval_cases = dedup.eval_requests(pack.evalset_path) if pack.evalset_path else []
        for case_id, request in self.eval_cases:
            self.eval_index.add(case_id, dedup.normalise_request(request))
        self.task_verdict: dict[str, str] = {}       # task id -> keep | near | leak
        self.leaked_cases: Counter = Counter()
        self.examples_in = 0
        self.after_near = 0
        self.seen: set[bytes] = set()
        self.after_exact: list[tuple[ExampleRecord, bool]] = []     # (example, leaked)
        self.seconds = 0.0

    def add(self, trace: SelectedTrace) -> None:
        started = time.perf_counter()
        self.examples_in += len(trace.examples)
        verdict = self.task_verdict.get(trace.task_id)
        if verdict is None:
            verdict = _request_verdict(trace, self.within, self.eval_index, self.leaked_cases)
            self.task_verdict[trace.task_id] = verdict
        if verdict != "near":
            self.after_near += len(trace.examples)
            for example in trace.examples:
                if example.digest not in self.seen:
                    self.seen.add(example.digest)
                    self.after_exact.append((example, verdict == "leak"))
        self.seconds += time.perf_counter() - started

    def finish(self) -> tuple[list[ExampleRecord], list[dict], dict]:
        """Return the kept examples, the filter records and the leakage report."""
        config = self.config
        kept = [example for example, leaked in self.after_exact if not leaked]
        leak_examples = len(self.after_exact) - len(kept)
        verdicts = Counter(self.task_verdict.values())
        filters = [
            {"filter": "near_duplicate_requests", "in": self.examples_in, "out": self.after_near,
             "tasks_dropped": verdicts["near"],
             "threshold": config.near_duplicate_threshold,
             "policy": "requests with different numbers are never near duplicates"},
            {"filter": "exact_duplicate_examples", "in": self.after_near,
             "out": len(self.after_exact)},
            {"filter": "leakage_guard", "in": len(self.after_exact), "out": len(kept),
             "tasks_dropped": verdicts["leak"],
             "eval_cases": len(self.eval_cases), "threshold": config.leakage_threshold},
        ]
        leakage = {"examples_dropped": leak_examples,
                   "tasks_dropped": verdicts["leak"],
                   "eval_cases": len(self.eval_cases),
                   "eval_cases_matched": len(self.leaked_cases),
                   "evalset": str(self.pack.evalset_path) if self.pack.evalset_path else None}
        if not self.eval_cases:
            log.warning("pack %s has no eval set; the leakage guard compared against nothing",
                        self.pack.id)
        return kept, filters, leakage


def _request_verdict(trace: SelectedTrace, within: dedup.RequestIndex,
                     eval_index: dedup.RequestIndex, leaked_cases: Counter) -> str:
    """Classify a task's request: "near" (duplicate of a kept task), "leak" or "keep"."""
    normalised = dedup.normalise_request(trace.request)
    minhash = None
    if dedup.exact_request_key(normalised) not in within.exact:
        minhash = dedup.request_minhash(normalised)
    match = within.find(normalised, minhash)
    if match is not None and match.key != trace.task_id:
        return "near"
    if len(eval_index):
        if minhash is None:
            minhash = dedup.request_minhash(normalised)
        leak = eval_index.find(normalised, minhash)
        if leak is not None:
            leaked_cases[leak.key] += 1
            return "leak"
    within.add(trace.task_id, normalised, minhash)
    return "keep"


# -- build: render, tokenise, write ------------------------------------------------------------


def _fetch_traces(store: Store, trace_ids: list[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for start in range(0, len(trace_ids), 500):
        chunk = trace_ids[start:start + 500]
        placeholders = ", ".join("?" for _ in chunk)
        for row in store.db.execute(
                f"select id, messages from traces where id in ({placeholders})", chunk):
            found[row[0]] = {"messages": json.loads(row[1])}
    return found


def build(store: Store, workspace, plan_result: Plan, tokenizer=None,
          progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Render and tokenise the planned examples and write the dataset folder."""
    from appliance.curation import render

    config = plan_result.config
    pack = plan_result.pack
    base_identity: dict = {"base_spec": config.base}
    if tokenizer is None:
        from appliance.models import load_tokenizer, resolve_base

        tokenizer = load_tokenizer(config.base)
        base_identity.update(resolve_base(config.base).identity)
    renderer = render.choose_renderer(tokenizer, config.tool_style)
    system_prompt = render.system_prompt_for(pack, config.prompt_kind)
    tools = pack.openai_tools()
    reviews = review.decisions(store)

    ordered = sorted(plan_result.examples,
                     key=lambda e: (e.split, e.task_id, e.trace_id, e.decision_index))
    trace_ids = sorted({example.trace_id for example in ordered})
    traces = _fetch_traces(store, trace_ids)

    writer = datasets.DatasetWriter(workspace.artifacts)
    report = render.TokenizeReport()
    written = {"train": 0, "validation": 0}
    try:
        for position, example in enumerate(ordered):
            decision = reviews.get(example.trace_id)
            if example.variant != verify.ORIGINAL and decision and decision.edit_id == example.variant:
                messages = decision.messages
            else:
                messages = traces[example.trace_id]["messages"]
            try:
                prepared = render.prepare_messages(messages[: example.decision_index + 1],
                                                   system_prompt)
            except ArgumentsError as error:
                # Only a trace accepted with an override can still carry such arguments.
                report.render_errors += 1
                report.render_error_samples.append(f"{example.key}: {error}")
                log.warning("example %s not rendered: %s", example.key, error)
                continue
            meta = {"trace_id": example.trace_id, "task_id": example.task_id,
                    "decision_index": example.decision_index, "tool": example.tool,
                    "outcome": example.outcome, "rules": list(example.rules),
                    "repeat": example.repeat, "variant": example.variant}
            rows, row_report = render.tokenize_examples(
                [{"messages": prepared, "tools": tools, "meta": meta}], tokenizer, renderer,
                config.max_length)
            _merge_reports(report, row_report)
            if not rows:
                continue
            row = rows[0]
            meta["history_dropped"] = row["history_dropped"]
            # Oversampled examples are written once per repeat, so that a trainer reading
            # the files as they are trains on the balanced distribution.
            for copy in range(example.repeat if example.split == TRAIN else 1):
                line_meta = dict(meta, copy=copy)
                writer.add(example.split, {"messages": row["messages"], "tools": tools,
                                           "meta": line_meta}, row["input_ids"], row["labels"])
                written[example.split] += 1
            if progress and position % 200 == 0:
                progress(position, len(ordered), "rendering")
    except BaseException:
        writer.abort()
        raise
    if not written["train"] and not written["validation"]:
        writer.abort()
        raise ReckonError(f"no example could be rendered ({report.render_errors} render "
                          f"errors, {report.could_not_fit} over --max-length "
                          f"{config.max_length}); first errors: "
                          f"{report.render_error_samples[:3]}")

    funnel = dict(plan_result.funnel)
    funnel["rendered"] = written["train"] + written["validation"]
    filters = list(plan_result.filters)
    filters.append({"filter": "render_and_fit", "in": len(ordered), "out": report.tokenized,
                    "could_not_fit": report.could_not_fit, "render_errors": report.render_errors,
                    "max_length": config.max_length})
    manifest = {
        "pack": {"id": pack.id, "version": pack.version, "digest": pack.digest},
        "renderer": renderer.name,
        "renderer_identity": renderer.identity(),
        "prompt_kind": config.prompt_kind,
        "tool_style": renderer.tool_style,
        "tokenizer": {**base_identity, "class": type(tokenizer).__name__,
                      "name_or_path": getattr(tokenizer, "name_or_path", None),
                      "vocab_size": len(tokenizer),
                      "end_of_turn": renderer.end_of_turn,
                      "end_of_turn_id": tokenizer.convert_tokens_to_ids(renderer.end_of_turn),
                      "pad_token_id": tokenizer.pad_token_id,
                      "eos_token_id": tokenizer.eos_token_id},
        "max_length": config.max_length,
        "source_runs": plan_result.runs,
        "config": config.to_dict(),
        "funnel": funnel,
        "filters": filters,
        "verification": plan_result.verification,
        "leakage": plan_result.leakage,
        "balance": plan_result.balance,
        "tokenization": report.to_dict(),
        "created_at": now(),
    }
    dataset_id, path, manifest = writer.seal(manifest)
    datasets.record(store, dataset_id, path, manifest)
    log.info("dataset %s written to %s (%s)", dataset_id, path, manifest["split_sizes"])
    return {"dataset_id": dataset_id, "path": str(path), "funnel": funnel, "filters": filters,
            "split_sizes": manifest["split_sizes"], "leakage": plan_result.leakage,
            "balance": plan_result.balance, "verification": plan_result.verification,
            "tokenization": report.to_dict(), "renderer": renderer.name,
            "timings": plan_result.timings}


def _merge_reports(total, part: dict) -> None:
    for key, value in part.items():
        current = getattr(total, key)
        if key == "max_tokens":
            setattr(total, key, max(current, value))
        elif isinstance(value, list):
            current.extend(value[: max(0, 100 - len(current))])
        else:
            setattr(total, key, current + value)


def curate(store: Store, workspace, config: CurationConfig, tokenizer=None,
           progress: Callable[[int, int, str], None] | None = None) -> dict:
    plan_result = plan(store, config, progress)
    if plan_result.funnel["traces_in"] == 0:
        raise ReckonError("the selected runs have no traces to curate")
    if not plan_result.examples:
        raise ReckonError(f"no example survived curation; funnel: {plan_result.funnel}; "
                          "`reckon curate --json` lists the verification reasons")
    return build(store, workspace, plan_result, tokenizer, progress)


def run_job(ctx, **params) -> dict:
    """Job entry point (kind "curate"); params are CurationConfig fields plus `all`."""
    params = dict(params)
    if params.pop("all", False):
        params["runs"] = None
    unknown = set(params) - set(CurationConfig.__dataclass_fields__)
    if unknown:
        raise ReckonError(f"unknown curate parameter(s): {', '.join(sorted(unknown))}")
    config = CurationConfig(**params)

    def progress(completed: int, total: int, message: str) -> None:
        ctx.progress(completed=completed, total=total, message=message)

    result = curate(ctx.store, ctx.workspace, config, progress=progress)
    ctx.event("dataset", dataset_id=result["dataset_id"], funnel=result["funnel"])
    return result
