"""`reckon train`: train LoRA candidates, resume them, and A/B them on a frozen eval set.

    reckon train --base embedded --dataset D
    reckon train --bases embedded,qwen2.5:3b --dataset D --evalset E --lora-r 8,16
    reckon train --resume CANDIDATE
    reckon train list | show CANDIDATE

Every (base, rank) pair becomes one candidate trained on the same dataset with the same
seed. The same command runs data-parallel under torchrun or `accelerate launch`
(e.g. `torchrun --nproc_per_node 2 -m appliance.training --base embedded --dataset D`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import threading
from pathlib import Path

import click

from appliance.cli import pass_app
from appliance.cli.output import emit_json, print_table, progress_bar
from appliance.errors import ConfigError

log = logging.getLogger(__name__)


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _ints(value: str | None, option: str) -> list[int]:
    try:
        return [int(item) for item in _split(value)]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}",
                                 param_hint=option) from None


def _config_file(path: str | None) -> dict:
    if not path:
        return {}
    text = Path(path).read_text()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except (ValueError, Exception) as error:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"{path}: cannot parse the training config ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the training config must be a mapping of TrainConfig fields")
    return values


@click.group(invoke_without_command=True)
@click.option("--base", help="Base to train on: 'embedded', a .gguf file, an HF folder or an "
                             "Ollama model name such as qwen2.5:3b.")
@click.option("--bases", help="Comma-separated bases to A/B (each trained on the same dataset).")
@click.option("--dataset", help="Dataset id under artifacts/datasets/.")
@click.option("--evalset", help="Frozen eval set to evaluate every candidate on after training.")
@click.option("--resume", "resume", metavar="CANDIDATE", help="Continue an interrupted candidate.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON or YAML file of TrainConfig fields; options below override it.")
@click.option("--lora-r", help="LoRA rank; comma-separated values train one candidate each.")
@click.option("--lora-alpha", type=int, help="LoRA alpha [default: 2 x rank].")
@click.option("--lora-dropout", type=float, help="Dropout on the LoRA input [default: 0.05].")
@click.option("--target-modules", help="Comma-separated module names to adapt "
                                       "[default: all attention and MLP projections].")
@click.option("--lr", "learning_rate", type=float, help="Peak learning rate [default: 2e-4].")
@click.option("--batch-size", type=int, help="Sequences per micro-batch per process [default: 8].")
@click.option("--grad-accum", "gradient_accumulation_steps", type=int,
              help="Micro-batches per optimizer step per process [default: 1].")
@click.option("--epochs", type=float, help="Passes over the training split [default: 3].")
@click.option("--max-steps", type=int, help="Optimizer steps; overrides --epochs.")
@click.option("--warmup-steps", type=int, help="Linear warm-up steps [default: 5% of the steps].")
@click.option("--max-length", type=int, help="Tokens per sequence; longer ones are cut [default: 2048].")
@click.option("--seed", type=int, help="Seed for LoRA init, data order and dropout [default: 0].")
@click.option("--eval-steps", type=int, help="Validate every this many steps [default: 50].")
@click.option("--save-steps", type=int, help="Checkpoint every this many steps [default: 100].")
@click.option("--patience", type=int, help="Stop after this many validations without improvement.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]),
              help="Compute dtype; auto picks bf16 on CUDA and on CPUs with AMX or AVX-512 BF16.")
@click.option("--share-prefix/--no-share-prefix", default=None,
              help="Run a micro-batch's common leading tokens once [default: on]. Without "
                   "LoRA dropout the loss and gradients are the same either way.")
@click.option("--pick-by", default="accuracy", show_default=True,
              help="Eval metric that picks the A/B winner: a main metric, rule:<id> or "
                   "category:<name>. Without eval results the lowest validation loss wins.")
@pass_app
@click.pass_context
def command(click_ctx, app, base, bases, dataset, evalset, resume, config_path, lora_r, lora_alpha,
            lora_dropout, target_modules, pick_by, **loop_options):
    """Train LoRA candidates and A/B them on the eval set."""
    if click_ctx.invoked_subcommand:
        return
    if resume:
        records = [_run_training(app, {"resume": resume}, f"resume {resume}")]
    else:
        base_list = _split(bases) or ([base] if base else [])
        if not base_list:
            raise click.UsageError("give --base or --bases (or --resume CANDIDATE)")
        if not dataset:
            raise click.UsageError("give --dataset (a dataset id from `reckon curate`)")
        config = _config_file(config_path)
        config.update({key: value for key, value in loop_options.items() if value is not None})
        if lora_dropout is not None:
            config["lora_dropout"] = lora_dropout
        if target_modules:
            config["target_modules"] = _split(target_modules)
        ranks = _ints(lora_r, "--lora-r") or [config.get("r", 16)]
        records = []
        for base_spec, rank in itertools.product(base_list, ranks):
            candidate_config = {**config, "r": rank,
                                "lora_alpha": lora_alpha or config.get("lora_alpha") or 2 * rank}
            params = {"base": base_spec, "dataset": dataset, "config": candidate_config}
            records.append(_run_training(app, params, f"{base_spec} r={rank}"))

    if int(os.environ.get("RANK", "0")) != 0:
        return
    evaluations = {record["candidate_id"]: _evaluate(app, record, evalset) for record in records} \
        if evalset else {}
    _show(app, records, evaluations, pick_by)


def _run_training(app, params: dict, label: str) -> dict:
    """Run one training job: a recorded job on rank 0, plain training on the other ranks."""
    from appliance.jobs import JobCancelled, run_inline

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        from appliance.training.job import train_candidate

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        record = train_candidate(app.workspace, base=params.get("base"), dataset=params.get("dataset"),
                                 config=params.get("config"), resume=params.get("resume"),
                                 stop_requested=stop.is_set)
        return {"candidate_id": record["id"], "metrics": record["metrics"],
                "adapter_path": record["adapter_path"], "status": record["status"]}

    total = (params.get("config") or {}).get("max_steps")
    with progress_bar(f"train {label}", total, enabled=not app.json_output) as listener:
        try:
            job_id, result = run_inline(app.workspace, "train", params, listener)
        except JobCancelled as error:
            raise click.ClickException(f"training stopped ({error}); the checkpoint is saved, "
                                       "continue with `reckon train --resume CANDIDATE` "
                                       "(`reckon train list` shows its id)") from None
    result["job_id"] = job_id
    return result


def _evaluate(app, record: dict, evalset: str) -> dict:
    """Evaluate a candidate (base + peft adapter, compact prompt) on the frozen eval set."""
    from appliance.evaluation.runner import evaluate
    from appliance.runtimes import Sampling
    from appliance.training.job import read_candidate

    candidate = read_candidate(app.workspace, record["candidate_id"])
    spec = f"hf:{candidate['base']['spec']}+adapter={candidate['adapter_path']}"
    return evaluate(app.workspace, evalset=evalset, runtime_spec=spec, prompt="compact",
                    tool_style="compact", sampling=Sampling(max_tokens=200), mode="first",
                    label=f"{candidate['id']}-adapter")


def _summary_of(evaluation) -> dict:
    """The metric summary of the result's primary part (first decision or task)."""
    if not evaluation:
        return {}
    summaries = evaluation.get("summary") or {}
    return summaries.get(evaluation.get("primary_part") or "first") or {}


def _metric(summary: dict, key: str) -> dict | None:
    """Find `key` (a main metric, "rule:<id>" or "category:<name>") in an eval summary."""
    if not summary:
        return None
    from appliance.evaluation.metrics import metric_lookup

    try:
        found = metric_lookup(summary, key)
    except (KeyError, TypeError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("value"), (int, float)) else None


def _show(app, records: list[dict], evaluations: dict, pick_by: str) -> None:
    from appliance.training.job import read_candidate

    rows = []
    for record in records:
        candidate = read_candidate(app.workspace, record["candidate_id"])
        metrics = candidate.get("metrics") or {}
        summary = _summary_of(evaluations.get(record["candidate_id"]))
        rows.append({"candidate": candidate["id"], "base": candidate["base"]["spec"],
                     "r": candidate["config"]["r"], "lora_alpha": candidate["config"]["lora_alpha"],
                     "steps": metrics.get("steps"), "final_loss": metrics.get("final_loss"),
                     "best_val_loss": metrics.get("best_val_loss"),
                     "tokens_per_s": metrics.get("tokens_per_s"),
                     "metric": _metric(summary, pick_by), "adapter": candidate["adapter_path"]})
    for row in rows:
        row[pick_by] = row["metric"]["value"] if row["metric"] else None

    scored = [row for row in rows if row["metric"] is not None]
    if scored:
        higher = scored[0]["metric"].get("higher_is_better", True)
        pick = max if higher else min
        winner = pick(scored, key=lambda row: row[pick_by])["candidate"]
        reason = f"{'highest' if higher else 'lowest'} {pick_by} on the eval set"
    else:
        validated = [row for row in rows if row["best_val_loss"] is not None]
        winner = min(validated, key=lambda row: row["best_val_loss"])["candidate"] if validated else None
        reason = "lowest validation loss (no eval results)"

    if app.json_output:
        emit_json({"candidates": rows, "winner": winner, "picked_by": reason})
        return

    def number(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    print_table(["candidate", "base", "r", "alpha", "steps", "train loss", "best val loss",
                 "tok/s", pick_by],
                [[row["candidate"] + (" *" if row["candidate"] == winner else ""), row["base"],
                  row["r"], row["lora_alpha"], row["steps"], number(row["final_loss"]),
                  number(row["best_val_loss"]), number(row["tokens_per_s"], 0),
                  number(row[pick_by])] for row in rows],
                title="Candidates" + (f" (* winner: {reason})" if winner and len(rows) > 1 else ""))


@command.command("list")
@pass_app
def list_command(app):
    """List trained and interrupted candidates."""
    from appliance.training.job import list_candidates

    rows = list_candidates(app.workspace.store())
    if app.json_output:
        emit_json(rows)
        return
    print_table(["candidate", "status", "base", "dataset", "r", "best val loss"],
                [[row["id"], row["status"], row["base_spec"], row["dataset_id"],
                  (row.get("config") or {}).get("r"),
                  (row.get("metrics") or {}).get("best_val_loss")] for row in rows])


@command.command("show")
@click.argument("candidate")
@pass_app
def show_command(app, candidate):
    """Show one candidate's record (base identity, dataset digest, config, metrics)."""
    from appliance.training.job import read_candidate

    record = read_candidate(app.workspace, candidate)
    if app.json_output:
        emit_json(record)
    else:
        click.echo(json.dumps(record, indent=2, sort_keys=True, default=str))
