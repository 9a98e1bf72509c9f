"""Training candidates: the `train` job kind and the `candidates` table.

A candidate is one LoRA adapter trained on one base with one dataset and one configuration.
Its folder <workspace>/artifacts/candidates/<id>/ contains
    candidate.json   base identity, dataset digest, training config, status, final metrics
    adapter/         the adapter in peft format (adapter_config.json, adapter_model.safetensors),
                     with the weights of the best validation loss (the last step's without a
                     validation set)
    checkpoint/      the latest training checkpoint, for `reckon train --resume`
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from appliance.errors import ConfigError, NotFoundError
from appliance.store import Store, new_id, now

log = logging.getLogger(__name__)

CANDIDATES_TABLE = "candidates"


def ensure_candidates_table(store: Store) -> None:
    store.ensure_table(CANDIDATES_TABLE, {
        "id": str, "status": str,        # training | trained | interrupted | failed
        "base_spec": str, "base_digest": str,
        "identity": str,                 # JSON: the base's identity (spec, kind, path, weights digest)
        "dataset_id": str, "dataset_digest": str,
        "config": str,                   # JSON: TrainConfig fields
        "adapter_path": str, "checkpoint_path": str,
        "metrics": str,                  # JSON: losses, steps, tokens/s
        "job_id": str, "error": str, "created_at": float, "updated_at": float,
    }, indexes=[["status"], ["dataset_id"]])


def candidate_dir(workspace, candidate_id: str) -> Path:
    return workspace.artifacts / "candidates" / candidate_id


def read_candidate(workspace, candidate_id: str) -> dict:
    path = candidate_dir(workspace, candidate_id) / "candidate.json"
    if not path.is_file():
        raise NotFoundError(f"candidate {candidate_id!r} not found: {path} is missing; "
                            "`reckon train list` shows the candidates")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: invalid JSON ({error.msg})") from None


def list_candidates(store: Store) -> list[dict]:
    ensure_candidates_table(store)
    return list(store.rows(CANDIDATES_TABLE, order_by="created_at desc"))


class _JobReporter:
    """Forwards trainer progress to a JobContext (the TUI reads it from the jobs tables)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def on_step(self, step, total, loss, tokens_per_s, eta_s, learning_rate, val_loss=None):
        if val_loss is None:
            self.ctx.event("loss", step=step, loss=loss)
        else:
            self.ctx.event("loss", step=step, loss=loss, val_loss=val_loss)
        message = f"loss {loss:.4f}  {tokens_per_s:.0f} tok/s"
        if val_loss is not None:
            message += f"  val {val_loss:.4f}"
        self.ctx.progress(step, total, message=message, loss=loss, tokens_per_s=tokens_per_s,
                          eta_s=eta_s, lr=learning_rate)


def train_candidate(workspace, *, base: str | None = None, dataset: str | None = None,
                    config: dict | None = None, resume: str | None = None,
                    candidate_id: str | None = None, reporter=None, job_id: str | None = None,
                    stop_requested: Callable[[], bool] | None = None) -> dict:
    """Train (or resume) one candidate; return its record. Rank 0 alone writes files and rows.

    Under torchrun every rank calls this with the same arguments.
    """
    import torch

    from appliance.models import load_tokenizer, resolve_base
    from appliance.training.bases import load_base_model
    from appliance.training.config import TrainConfig
    from appliance.training.data import check_vocabulary, load_training_data
    from appliance.training.trainer import LoraTrainer, TrainingStopped, pick_dtype, setup_distributed

    dist = setup_distributed()
    store = workspace.store() if dist.is_main else None
    if store is not None:
        ensure_candidates_table(store)

    if resume:
        record = read_candidate(workspace, resume)
        candidate_id = resume
        base, dataset = record["base"]["spec"], record["dataset"]["id"]
        train_config = TrainConfig.from_dict(record["config"])
    else:
        if not base or not dataset:
            raise ConfigError("training needs a base and a dataset (or --resume CANDIDATE)")
        train_config = TrainConfig.from_dict(config or {})
        candidate_id = _agree_on_id(candidate_id or new_id("cand"), dist)
        record = None

    folder = candidate_dir(workspace, candidate_id)
    checkpoint = folder / "checkpoint"
    base_model = resolve_base(base)
    if record is not None and record["base"]["weights_digest"] != base_model.digest:
        raise ConfigError(f"candidate {candidate_id}: base {base!r} now has weights digest "
                          f"{base_model.digest}, but training started on "
                          f"{record['base']['weights_digest']}; the weights changed, so it cannot resume")

    data = load_training_data(workspace, dataset, base_model.digest, train_config.max_length,
                              tokenizer_loader=lambda: load_tokenizer(base))
    if record is not None and record["dataset"]["digest"] != data.digest:
        raise ConfigError(f"candidate {candidate_id}: dataset {dataset!r} now has digest {data.digest}, "
                          f"but training started on {record['dataset']['digest']}; it cannot resume")

    dtype = pick_dtype(train_config.precision, dist.device)
    identity = {**base_model.identity, "train_dtype": str(dtype).replace("torch.", "")}
    record = {
        "id": candidate_id, "status": "training", "base": identity,
        "dataset": {"id": dataset, "digest": data.digest, "renderer": data.renderer,
                    "train_examples": len(data.train), "validation_examples": len(data.validation),
                    "retokenized": data.retokenized},
        "config": train_config.to_dict(), "adapter_path": str(folder / "adapter"),
        "checkpoint_path": str(checkpoint), "job_id": job_id, "metrics": None,
        "created_at": (record or {}).get("created_at") or now(),
    }
    if dist.is_main:
        _write_record(workspace, store, record)

    try:
        torch.manual_seed(train_config.seed)
        model = load_base_model(base_model, dtype).to(dist.device)
        vocab_size = model.get_input_embeddings().num_embeddings
        check_vocabulary(data.train, vocab_size, f"dataset {dataset} train split")
        check_vocabulary(data.validation, vocab_size, f"dataset {dataset} validation split")

        from peft import get_peft_model

        # LoRA initialisation draws from torch's generator, so seed it right before.
        torch.manual_seed(train_config.seed)
        peft_model = get_peft_model(model, train_config.lora_config())
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        trainer = LoraTrainer(peft_model, train_config, data.train, data.validation, pad_id=pad_id,
                              checkpoint_dir=checkpoint, dist=dist, reporter=reporter,
                              stop_requested=stop_requested)
        if resume and not (checkpoint / "state.json").is_file():
            raise ConfigError(f"candidate {candidate_id} has no checkpoint in {checkpoint}; "
                              "it stopped before its first checkpoint, so train it again")
        metrics = trainer.train(resume=bool(resume))
    except BaseException as error:
        from appliance.jobs import JobCancelled

        stopped = isinstance(error, (JobCancelled, TrainingStopped, KeyboardInterrupt))
        record.update(status="interrupted" if stopped else "failed",
                      error=str(error) or type(error).__name__)
        if dist.is_main:
            _write_record(workspace, store, record)
        raise

    if dist.is_main:
        trainer.use_best_weights()
        adapter = folder / "adapter"
        peft_model.peft_config["default"].base_model_name_or_path = base
        peft_model.save_pretrained(str(adapter))
        record.update(status="trained", metrics=metrics, error=None)
        _write_record(workspace, store, record)
        log.info("candidate %s trained: %s", candidate_id, metrics)
    if dist.distributed:
        import torch.distributed

        torch.distributed.barrier()
    return record


def _agree_on_id(candidate_id: str, dist) -> str:
    if not dist.distributed:
        return candidate_id
    import torch.distributed

    box = [candidate_id]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _write_record(workspace, store: Store, record: dict) -> None:
    folder = candidate_dir(workspace, record["id"])
    folder.mkdir(parents=True, exist_ok=True)
    record = {**record, "updated_at": now()}
    staging = folder / "candidate.json.partial"
    staging.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    staging.replace(folder / "candidate.json")
    store.upsert(CANDIDATES_TABLE, {
        "id": record["id"], "status": record["status"], "base_spec": record["base"]["spec"],
        "base_digest": record["base"]["weights_digest"], "identity": record["base"],
        "dataset_id": record["dataset"]["id"], "dataset_digest": record["dataset"]["digest"],
        "config": record["config"], "adapter_path": record["adapter_path"],
        "checkpoint_path": record["checkpoint_path"], "metrics": record.get("metrics"),
        "job_id": record.get("job_id"), "error": record.get("error"),
        "created_at": record["created_at"], "updated_at": record["updated_at"],
    })


def run_job(ctx, **params: Any) -> dict:
    """Job entry point (kind "train"). params: base, dataset, config, resume, candidate_id."""
    record = train_candidate(ctx.workspace, base=params.get("base"), dataset=params.get("dataset"),
                             config=params.get("config"), resume=params.get("resume"),
                             candidate_id=params.get("candidate_id"), reporter=_JobReporter(ctx),
                             job_id=ctx.job_id)
    return {"candidate_id": record["id"], "adapter_path": record["adapter_path"],
            "metrics": record["metrics"], "status": record["status"]}
