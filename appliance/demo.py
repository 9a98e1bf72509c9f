"""The main job: the whole migration loop on the shipped pack with the embedded model.

    harness (embedded teacher: guided step-level rejection sampling with the pack's hints)
    -> curation (verified traces, plus step-verified prefixes of stopped ones) -> eval of the base with the full prompt
    -> LoRA training -> eval of the adapter (peft) and of the shipped GGUF LoRA (llama.cpp)
    -> comparison -> freeze -> sign -> ledger entries -> verify -> export

Every stage calls the same library functions as the CLI commands, in one workspace, and
the run ends with a report (report.json and report.md under artifacts/demo/<id>/) whose
table gives tool-name, exact-call, per-rule and refusal accuracy, base -> specialist, with
95 % Wilson intervals and tokens per task.

Presets size the run: "quick" fits about 20 minutes on 2 CPU cores after install (the
README's main command), "full" is a real run.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from appliance.errors import ReckonError
from appliance.store import new_id
from appliance.workspace import Workspace

log = logging.getLogger(__name__)

PACK = "entitlements"
Progress = Callable[[str, int, int, str], None]


@dataclass
class Preset:
    name: str
    tasks: int                   # harness tasks drawn from the pack's generators
    step_samples: int            # candidates per step (step-level rejection sampling)
    teacher_max_tokens: int
    eval_limit: int | None       # held-out cases for the base and GGUF evals (None: all)
    eval_mode: str               # first | task | both
    peft_eval_limit: int         # held-out cases for the peft adapter eval (transformers)
    # Eval decoding budget: a call or an answer of the shipped pack fits in about 120 tokens;
    # the budget bounds what a rambling base model spends on a case.
    eval_max_tokens: int = 200
    eval_max_steps: int = 6      # model steps per task in the multi-step part
    train: dict = field(default_factory=dict)
    max_length: int = 1024
    # Balance floors ("dimension=value:count"): rare first decisions are oversampled so that
    # a small set does not teach the specialist to always make the most common call.
    floors: list = field(default_factory=list)


PRESETS = {
    "quick": Preset(
        name="quick", tasks=49, step_samples=2, teacher_max_tokens=160, eval_limit=35,
        eval_mode="both", peft_eval_limit=4, eval_max_tokens=160, eval_max_steps=4,
        train={"r": 16, "lora_alpha": 32, "epochs": 5.0, "batch_size": 8,
               "learning_rate": 5e-4, "eval_steps": 20, "save_steps": 50, "max_length": 1024},
        floors=["tool=escalate_to_officer:12", "tool=refuse:12", "tool=search_guidance:24"]),
    "full": Preset(
        name="full", tasks=700, step_samples=6, teacher_max_tokens=200, eval_limit=None,
        eval_mode="both", peft_eval_limit=70,
        train={"r": 16, "lora_alpha": 32, "epochs": 3.0, "batch_size": 8,
               "learning_rate": 2e-4, "eval_steps": 50, "save_steps": 100, "max_length": 1024,
               "patience": 4},
        floors=["tool=escalate_to_officer:150", "tool=refuse:150"]),
}

# Metrics shown in the closing table, in order; "rule:" rows are added per pack rule.
TABLE_METRICS = ["tool_name_accuracy", "exact_call_accuracy", "refusal_accuracy", "task_success"]


def run_demo(workspace: Workspace, preset: str = "quick", *, operator: str | None = None,
             progress: Progress | None = None, export_path: str | None = None) -> dict:
    """Run every stage of the loop and return the report (also written to disk)."""
    if preset not in PRESETS:
        raise ReckonError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    operator = operator or _operator()
    demo_id = new_id("demo")
    folder = workspace.artifact_dir("demo", demo_id)
    report: dict[str, Any] = {"id": demo_id, "preset": asdict(settings), "operator": operator,
                              "started_at": time.time(), "stages": {}}
    notify = progress or (lambda stage, done, total, message: None)

    def stage(name: str):
        return _Stage(name, report, notify, folder)

    with stage("harness") as record:
        from appliance.harness import start_run, summarise_run

        def harness_progress(done, total, info):
            notify("harness", done, total, f"{info['task_id']}: {info['outcome']}")

        run = start_run(workspace, pack=PACK, teacher="embedded", tasks=settings.tasks,
                        step_samples=settings.step_samples, guide=True, hints=True,
                        max_tokens=settings.teacher_max_tokens, max_steps=4, prompt="teacher",
                        progress=harness_progress)
        record.update(run_id=run["id"], summary=summarise_run(workspace.store(), run["id"]))

    with stage("curation") as record:
        from appliance.curation.pipeline import CurationConfig, curate

        curated = curate(workspace.store(), workspace,
                         CurationConfig(runs=[run["id"]], pack=PACK, base="embedded",
                                        max_length=settings.max_length, per_task=1,
                                        verified_prefixes=True, floors=settings.floors))
        record.update(dataset_id=curated["dataset_id"], funnel=curated["funnel"],
                      split_sizes=curated["split_sizes"], leakage=curated["leakage"])

    from appliance.evaluation.runner import evaluate
    from appliance.runtimes import Sampling

    greedy = Sampling(max_tokens=settings.eval_max_tokens)

    with stage("eval-base") as record:
        base_eval = evaluate(workspace, runtime_spec="embedded", prompt="full", tool_style="full",
                             sampling=greedy, mode=settings.eval_mode, limit=settings.eval_limit,
                             label=f"{demo_id}-base-full-prompt",
                             max_steps=settings.eval_max_steps,
                             progress=_eval_progress(notify, "eval-base"))
        record.update(eval_id=base_eval["id"], summary=_brief(base_eval))

    with stage("train") as record:
        from appliance.training.job import train_candidate

        candidate = train_candidate(workspace, base="embedded", dataset=curated["dataset_id"],
                                    config=settings.train,
                                    reporter=_TrainProgress(notify))
        adapter_dir = Path(candidate["adapter_path"])
        record.update(candidate_id=candidate["id"], metrics=candidate["metrics"],
                      adapter=str(adapter_dir))

    with stage("export-gguf") as record:
        from appliance.models import embedded_gguf_path
        from bundles.gguf_lora import export_gguf_lora
        from bundles.ollama import write_modelfile

        gguf_lora = adapter_dir / "adapter.gguf"
        export_gguf_lora(adapter_dir, gguf_lora, embedded_gguf_path())
        write_modelfile(adapter_dir / "Modelfile", embedded_gguf_path(), "./adapter/adapter.gguf")
        record.update(gguf_lora=str(gguf_lora))

    with stage("eval-peft") as record:
        # transformers generation is several times slower than llama.cpp here, so the
        # peft adapter is checked on fewer cases, first decisions only, to show that the
        # shipped GGUF LoRA behaves like the adapter that was trained.
        peft_eval = evaluate(workspace, runtime_spec=f"hf:embedded+adapter={adapter_dir}",
                             prompt="compact", tool_style="compact",
                             sampling=Sampling(max_tokens=120),
                             mode="first", limit=settings.peft_eval_limit, batch_size=8,
                             label=f"{demo_id}-specialist-peft",
                             progress=_eval_progress(notify, "eval-peft"))
        record.update(eval_id=peft_eval["id"], summary=_brief(peft_eval))

    with stage("eval-gguf") as record:
        spec = f"llamacpp:{embedded_gguf_path()}+lora={gguf_lora}"
        gguf_eval = evaluate(workspace, runtime_spec=spec, prompt="compact", tool_style="compact",
                             sampling=greedy, mode=settings.eval_mode, limit=settings.eval_limit,
                             label=f"{demo_id}-specialist-gguf",
                             max_steps=settings.eval_max_steps,
                             progress=_eval_progress(notify, "eval-gguf"))
        record.update(eval_id=gguf_eval["id"], summary=_brief(gguf_eval),
                      peft_agreement=_agreement(peft_eval, gguf_eval))

    with stage("compare") as record:
        table = comparison_table(base_eval, gguf_eval)
        record.update(table=table)
        from appliance.evaluation.compare import compare, render_markdown
        from appliance.evaluation.runner import part_view

        markdown = []
        for part in ("first_decision", "task"):
            if part in (base_eval.get("parts") or {}) and part in (gguf_eval.get("parts") or {}):
                comparison = compare(part_view(base_eval, part), part_view(gguf_eval, part),
                                     critical=["tool_name_accuracy", "exact_call_accuracy"],
                                     tolerance=2.0)
                markdown.append(f"## {part}\n\n" + render_markdown(comparison))
        (folder / "comparison.md").write_text("\n\n".join(markdown), encoding="utf-8")
        record.update(report=str(folder / "comparison.md"))

    with stage("freeze") as record:
        from bundles.freeze import freeze
        from appliance.models import resolve_base

        base = resolve_base("embedded")
        version = freeze(
            workspace, adapter_dir,
            base_identity={**base.identity, "name": base.path.name,
                           "weights_sha256": base.digest.split(":")[-1]},
            dataset_digest=_dataset_digest(workspace, curated["dataset_id"]),
            evalset_digest=gguf_eval["evalset"]["digest"], eval_summary=_brief(gguf_eval),
            pack_id=gguf_eval["pack"]["id"], pack_digest=gguf_eval["pack"]["digest"],
            prompt_format=gguf_eval["settings"]["renderer"],
            training_config=candidate["config"], operator=operator)
        record.update(version=version.digest, path=str(version.path))

    with stage("sign") as record:
        from bundles import keys
        from bundles.sign import sign_version

        passphrase = _passphrase(workspace)
        if not keys.has_site_key(workspace):
            keys.init_key(workspace, passphrase)
        signer = sign_version(workspace, version.digest, passphrase, replace=True)
        record.update(signer=signer.as_dict())

    with stage("ledger") as record:
        from audit.ledger import Ledger

        ledger = Ledger.open(workspace.ledger_path)
        try:
            freeze_index, _ = ledger.append("freeze", {
                "version": version.digest, "bundle": str(version.path.name),
                "candidate": candidate["id"], "dataset": curated["dataset_id"]}, operator=operator)
            eval_index, _ = ledger.append("eval", ledger_eval_payload(version.digest, gguf_eval),
                                          operator=operator)
            checkpoint = ledger.checkpoint()
        finally:
            ledger.close()
        record.update(freeze_entry=freeze_index, eval_entry=eval_index,
                      checkpoint=str(checkpoint) if checkpoint is not None else None,
                      path=str(workspace.ledger_path))

    with stage("verify") as record:
        from bundles.sign import verify_bundle

        verification = verify_bundle(version.path, workspace=workspace,
                                     expected_digest=version.digest)
        ledger = Ledger.open(workspace.ledger_path, read_only=True)
        try:
            ledger_report = ledger.verify()
        finally:
            ledger.close()
        record.update(bundle=_plain(verification), ledger=_plain(ledger_report))

    with stage("export") as record:
        from bundles.archive import export_version

        target = Path(export_path) if export_path else folder / f"bundle-{version.digest.split(':')[-1][:12]}.tar.gz"
        archive = export_version(workspace, version.digest, target)
        record.update(archive=str(archive))

    report["finished_at"] = time.time()
    report["table"] = table
    report["paths"] = {"bundle": str(version.path), "archive": str(archive),
                       "report": str(folder / "report.md"), "ledger": str(workspace.ledger_path),
                       "comparison": str(folder / "comparison.md")}
    (folder / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str),
                                        encoding="utf-8")
    (folder / "report.md").write_text(render_report(report), encoding="utf-8")
    return report


class _Stage:
    """Times one stage, records it in the report, and names the stage in any error."""

    def __init__(self, name: str, report: dict, notify: Progress, folder: Path):
        self.name = name
        self.report = report
        self.notify = notify
        self.folder = folder
        self.record: dict = {}

    def __enter__(self) -> dict:
        self.started = time.perf_counter()
        self.notify(self.name, 0, 1, "started")
        log.info("demo %s: stage %s started", self.report["id"], self.name)
        return self.record

    def __exit__(self, exc_type, exc, tb):
        self.record["seconds"] = round(time.perf_counter() - self.started, 1)
        self.report["stages"][self.name] = self.record
        (self.folder / "report.json").write_text(
            json.dumps(self.report, indent=1, sort_keys=True, default=str), encoding="utf-8")
        if exc is not None:
            log.error("demo %s: stage %s failed: %s", self.report["id"], self.name, exc)
            if isinstance(exc, ReckonError):
                raise ReckonError(f"demo stage {self.name!r} failed: {exc}") from exc
            return False
        self.notify(self.name, 1, 1, f"done in {self.record['seconds']} s")
        return False


class _TrainProgress:
    """Forwards the trainer's Reporter calls to the demo's progress callback."""

    def __init__(self, notify: Progress):
        self.notify = notify

    def on_step(self, step, total, loss, tokens_per_s, eta_s, learning_rate,
                val_loss=None) -> None:
        note = f"loss {loss:.3f}  {tokens_per_s:.0f} tok/s  ETA {eta_s:.0f} s"
        if val_loss is not None:
            note += f"  validation {val_loss:.3f}"
        self.notify("train", step, total, note)


def _eval_progress(notify: Progress, stage: str):
    def progress(done: int, total: int, info: dict) -> None:
        notify(stage, done, total, f"{info.get('part', '')} {info.get('case_id', '')}")
    return progress


def _brief(result: dict) -> dict:
    """Per-part metric values with intervals, as stored in manifests and the report."""
    brief = {}
    for part, summary in (result.get("summary") or {}).items():
        metrics = summary.get("metrics", {})
        brief[part] = {name: {k: metrics[name].get(k) for k in ("value", "low", "high", "n")}
                       for name in metrics}
        brief[part]["rules"] = {rule: {k: value.get(k) for k in ("value", "low", "high", "n")}
                                for rule, value in (summary.get("rules") or {}).items()}
        brief[part]["tokens"] = summary.get("tokens")
    return brief


def _metric(summary: dict, key: str) -> dict | None:
    if key.startswith("rule:"):
        return (summary.get("rules") or {}).get(key[len("rule:"):])
    return (summary.get("metrics") or {}).get(key)


def comparison_table(base: dict, specialist: dict) -> list[dict]:
    """Rows of (metric, part, base, specialist, change), first-decision metrics then rules."""
    rows = []
    plan = [("first_decision", key) for key in TABLE_METRICS[:3]] + [("task", "task_success")]
    rules = set()
    for result in (base, specialist):
        rules.update(((result.get("summary") or {}).get("task") or {}).get("rules") or {})
    plan += [("task", f"rule:{rule}") for rule in sorted(rules)]
    for part, key in plan:
        a = _metric((base.get("summary") or {}).get(part) or {}, key)
        b = _metric((specialist.get("summary") or {}).get(part) or {}, key)
        if not a or not b or a.get("value") is None or b.get("value") is None:
            continue
        rows.append({"metric": key, "part": part, "base": a, "specialist": b,
                     "change_points": round(100 * (b["value"] - a["value"]), 1)})
    for part in ("task", "first_decision"):
        a = ((base.get("summary") or {}).get(part) or {}).get("tokens") or {}
        b = ((specialist.get("summary") or {}).get(part) or {}).get("tokens") or {}
        if a.get("mean") and b.get("mean"):
            rows.append({"metric": "tokens_per_task", "part": part, "base": a, "specialist": b,
                         "change_points": None})
            break
    return rows


def ledger_eval_payload(version: str, result: dict) -> dict:
    """Turn an eval result into the ledger's eval entry (metrics with interval and n)."""
    primary = result.get("primary_part") or "first_decision"
    summary = (result.get("summary") or {}).get(primary) or {}

    def metric(value: dict) -> dict:
        return {"value": value.get("value"), "low": value.get("low"), "high": value.get("high"),
                "n": int(value.get("n") or 0)}

    metrics = {f"{part}.{name}": metric(value)
               for part, part_summary in (result.get("summary") or {}).items()
               for name, value in (part_summary.get("metrics") or {}).items()}
    rules = {}
    for rule, value in (summary.get("rules") or {}).items():
        n = int(value.get("n") or 0)
        rules[rule] = {"n": n, "passed": int(round((value.get("value") or 0) * n))}
    return {"version": version, "eval_set": result["evalset"]["digest"], "metrics": metrics,
            "rules": rules, "runtime": result.get("model") or {},
            "decoding": (result.get("settings") or {}).get("sampling") or {},
            "eval_id": result["id"], "settings": result.get("settings") or {}}


def _agreement(peft: dict, gguf: dict) -> dict:
    """Count the cases where the peft adapter and the GGUF LoRA made the same first decision."""
    first_peft = {case["case_id"]: case
                  for case in (peft.get("parts") or {}).get("first_decision", {}).get("cases", [])}
    first_gguf = {case["case_id"]: case
                  for case in (gguf.get("parts") or {}).get("first_decision", {}).get("cases", [])}
    shared = sorted(set(first_peft) & set(first_gguf))
    same_tool = sum(1 for case_id in shared
                    if [c.get("name") for c in first_peft[case_id].get("calls") or []]
                    == [c.get("name") for c in first_gguf[case_id].get("calls") or []])
    same_verdict = sum(1 for case_id in shared
                       if first_peft[case_id]["passed"] == first_gguf[case_id]["passed"])
    return {"cases": len(shared), "same_tool_calls": same_tool, "same_verdict": same_verdict}


def _dataset_digest(workspace: Workspace, dataset_id: str) -> str:
    manifest = json.loads((workspace.artifacts / "datasets" / dataset_id / "manifest.json").read_text())
    return manifest.get("digest") or dataset_id


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dict__"):
        return {k: str(v) for k, v in vars(value).items()}
    return str(value)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _passphrase(workspace: Workspace) -> str:
    """Return the signing-key passphrase: RECKON_KEY_PASSPHRASE, else one generated for the demo.

    NOTE: the generated passphrase is stored next to the key (mode 0600) so that the demo can
    run unattended. A production site sets RECKON_KEY_PASSPHRASE or uses `reckon keys init`.
    """
    given = os.environ.get("RECKON_KEY_PASSPHRASE")
    if given:
        return given
    path = workspace.keys / "demo-passphrase"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def format_interval(metric: dict) -> str:
    value, low, high = metric.get("value"), metric.get("low"), metric.get("high")
    if value is None:
        return "-"
    return f"{100 * value:.1f} % [{100 * low:.1f}, {100 * high:.1f}] n={metric.get('n')}"


def render_report(report: dict) -> str:
    lines = [f"# Reckoning demo {report['id']} ({report['preset']['name']} preset)", "",
             "| metric | base, full prompt | specialist (GGUF + LoRA), compact prompt | change |",
             "|---|---|---|---|"]
    for row in report.get("table", []):
        if row["metric"] == "tokens_per_task":
            lines.append(f"| tokens per task ({row['part']}) | {row['base']['mean']:.0f} | "
                         f"{row['specialist']['mean']:.0f} | "
                         f"{row['specialist']['mean'] / row['base']['mean']:.2f}x |")
            continue
        lines.append(f"| {row['metric']} ({row['part']}) | {format_interval(row['base'])} | "
                     f"{format_interval(row['specialist'])} | {row['change_points']:+.1f} pts |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    for name, stage in report["stages"].items():
        lines.append(f"| {name} | {stage.get('seconds')} |")
    lines += ["", "Paths:"] + [f"- {key}: {value}" for key, value in report.get("paths", {}).items()]
    return "\n".join(lines) + "\n"


def run_job(ctx, preset: str = "quick", operator: str | None = None,
            export_path: str | None = None) -> dict:
    """Job entry point (kind "demo")."""
    stages = ["harness", "curation", "eval-base", "train", "export-gguf", "eval-peft",
              "eval-gguf", "compare", "freeze", "sign", "ledger", "verify", "export"]

    def progress(stage: str, done: int, total: int, message: str) -> None:
        index = stages.index(stage) if stage in stages else 0
        ctx.progress(index, len(stages), message=f"{stage}: {message}", stage=stage,
                     stage_done=done, stage_total=total)

    report = run_demo(ctx.workspace, preset, operator=operator, progress=progress,
                      export_path=export_path)
    return {"demo_id": report["id"], "paths": report["paths"], "table": report["table"]}
