"""The LoRA training loop.

Loss is taken only on supervised tokens, and the LM head runs only where it is needed. The
backbone produces hidden states, and the states at positions whose next-token label is
supervised are gathered. The frozen LM head and the cross-entropy then run on those rows
alone, in chunks, computing the gradient for the hidden states in the same pass. With Gemma
3's 262k vocabulary, a full-sequence LM head would otherwise dominate a small model's step.

Examples rendered from one pack start with the same system prompt and tool list, often most
of their tokens. When every sequence of a micro-batch starts with the same tokens, the backbone
runs that shared prefix once (batch of one) and the sequences' remaining tokens attend to its
keys and values, expanded over the batch. Gradients flow back through the expansion, so
without LoRA dropout the loss and gradients equal those of the full batch. With dropout, the
rows share one dropout mask on the prefix.

One step is one optimizer update over batch_size * gradient_accumulation_steps * world_size
sequences. Its loss is the sum of token losses divided by the step's supervised-token count,
which every rank computes from the shared batch plan, so gradients summed across ranks
(all-reduce) equal those of one process running the same global batch.

Distributed runs are detected from WORLD_SIZE/RANK/LOCAL_RANK as set by torchrun or
accelerate launch: gloo on CPU, nccl on CUDA. Only rank 0 writes checkpoints and adapters.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from appliance.errors import ConfigError
from appliance.training.checkpoint import (load_checkpoint, load_trainable_state, save_checkpoint,
                                           trainable_state)
from appliance.training.config import TrainConfig
from appliance.training.data import IGNORE_INDEX, Example, collate, plan_epoch, plan_validation

log = logging.getLogger(__name__)

# Rows of the LM head computed at once: 2**26 logits (256 MiB in fp32) per chunk.
LOGITS_PER_CHUNK = 1 << 26


# -- hardware ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistributedInfo:
    """Join the process group that torchrun/accelerate describe in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if world_size <= 1:
        return DistributedInfo(device="cuda:0" if cuda else "cpu")
    import torch.distributed as dist

    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if not cuda:
        # Processes on one host share its cores; oversubscribed threads slow every rank.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistributedInfo(rank, world_size, local_rank, device, backend)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """Return whether the CPU has bf16 matrix instructions (AMX or AVX-512 BF16) for oneDNN.

    On an AMD EPYC with avx512_bf16 (no AMX) a 1024^3 bf16 matmul ran 2.5x faster than fp32
    with torch 2.13; CPUs without either fall back to slow emulation.
    """
    flags = cpu_flags()
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return bool(torch.backends.mkldnn.is_available())
    return False


def pick_dtype(precision: str, device: str) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


# -- loss ----------------------------------------------------------------------------------------

class _HeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against targets, with the head frozen.

    The forward pass computes the logits chunk by chunk and, when a gradient is needed, the
    gradient for `hidden` at the same time, so no (tokens x vocabulary) tensor outlives a chunk.
    `softcap` applies Gemma's final logit soft-capping, cap * tanh(logits / cap).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, need_grad):
        rows = max(1, LOGITS_PER_CHUNK // weight.shape[0])
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            logits = (hidden[start:stop] @ weight.t()).float()
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            chosen = targets[start:stop]
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, chosen[:, None]).squeeze(1)).sum()
            if need_grad:
                probabilities = torch.exp(logits.sub_(log_norm[:, None]))
                probabilities[torch.arange(stop - start, device=hidden.device), chosen] -= 1.0
                if softcap:
                    probabilities.mul_(1.0 - capped * capped)
                grad_hidden[start:stop] = probabilities.to(weight.dtype) @ weight
        if need_grad:
            ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None, None


def head_cross_entropy(hidden, weight, targets, softcap: float | None = None):
    """Return the summed cross-entropy of the LM head at `hidden` rows (see _HeadCrossEntropy)."""
    if weight.requires_grad:
        # A trainable head needs its own gradient; take the plain path.
        logits = (hidden @ weight.t()).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _HeadCrossEntropy.apply(hidden, weight, targets, softcap, need_grad)


# A shared prefix shorter than this is not worth a second backbone call.
MIN_SHARED_PREFIX = 16


def shared_prefix_length(input_ids, labels) -> int:
    """Return how many leading tokens every row shares, up to the first supervised position.

    The prefix stops one token before the earliest supervised label of any row, so that every
    hidden state the loss needs (the one before each supervised token) lies after the prefix.
    """
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    common = int(same.long().cumprod(0).sum())
    supervised = labels != IGNORE_INDEX
    if not bool(supervised.any()):
        return 0
    # argmax finds the first True. Rows without any supervised label cannot bound the prefix.
    first = supervised.long().argmax(dim=1)[supervised.any(dim=1)]
    return max(0, min(common, int(first.min()) - 1))


class SupervisedLoss:
    """Run the backbone, gather the supervised positions and apply the LM head only there."""

    def __init__(self, causal_lm, share_prefix: bool = True):
        self.backbone = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm.model
        self.head = causal_lm.get_output_embeddings()
        config = causal_lm.config
        self.softcap = getattr(config, "final_logit_softcapping", None) or None
        self.share_prefix = share_prefix
        # transformers 5.25 renamed the cache argument and output from past_key_values.
        parameters = inspect.signature(self.backbone.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        if self.head is None or getattr(self.head, "bias", None) is not None:
            raise ValueError("the base model's LM head must be a bias-free linear layer")

    def __call__(self, input_ids, labels):
        """Return (summed loss, supervised target count) for a right-padded micro-batch."""
        shared = shared_prefix_length(input_ids, labels) if self.share_prefix else 0
        if shared >= MIN_SHARED_PREFIX:
            hidden = self._hidden_after_prefix(input_ids, shared)
            labels = labels[:, shared:]
        else:
            # No attention mask: with right padding and causal attention, real tokens never
            # see the pads that follow them, and the pads' own outputs are never gathered.
            hidden = self.backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        rows = hidden[:, :-1][supervised]
        return head_cross_entropy(rows, self.head.weight, targets[supervised], self.softcap), \
            int(supervised.sum())

    def _hidden_after_prefix(self, input_ids, shared: int):
        """Return the hidden states of every row from position `shared` on.

        The first `shared` tokens run once, as a batch of one.
        """
        prefix = self.backbone(input_ids=input_ids[:1, :shared], use_cache=True)
        cache = getattr(prefix, self._cache_name)
        batch = input_ids.shape[0]
        for layer in cache.layers:
            # expand() returns a view, so one copy of the prefix's keys and values serves
            # every row. Its backward pass sums the rows' gradients into the prefix pass.
            layer.keys = layer.keys.expand(batch, -1, -1, -1)
            layer.values = layer.values.expand(batch, -1, -1, -1)
        return self.backbone(input_ids=input_ids[:, shared:], use_cache=True,
                             **{self._cache_name: cache}).last_hidden_state


def full_logits_loss(causal_lm, input_ids, labels):
    """Reference loss through the model's own forward (full logits); used by tests."""
    logits = causal_lm(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
    targets = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                             reduction="sum")


# -- the loop ------------------------------------------------------------------------------------

class Reporter:
    """Receives progress from rank 0. Methods may raise (e.g. JobCancelled) to stop training."""

    def on_step(self, step: int, total: int, loss: float, tokens_per_s: float, eta_s: float,
                learning_rate: float, val_loss: float | None = None) -> None:
        """Receive one finished step; val_loss is set on the steps that ran validation."""


class TrainingStopped(Exception):
    """Raised on every rank when a stop was requested; rank 0 has written a checkpoint."""


def cosine_with_warmup(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return multiplier


class LoraTrainer:
    """Train the trainable parameters of a peft model on length-grouped micro-batches."""

    def __init__(self, model, config: TrainConfig, train: list[Example], validation: list[Example],
                 *, pad_id: int, checkpoint_dir: Path | None, dist: DistributedInfo | None = None,
                 reporter: Reporter | None = None, stop_requested: Callable[[], bool] | None = None):
        self.model = model
        self.config = config
        self.train_examples = train
        self.validation_examples = validation
        self.pad_id = pad_id
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.dist = dist or DistributedInfo()
        self.reporter = reporter or Reporter()
        self.stop_requested = stop_requested or (lambda: False)
        self.device = torch.device(self.dist.device)

        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.loss_fn = SupervisedLoss(causal_lm, share_prefix=config.share_prefix)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the model has no trainable parameters; wrap it with peft first")

        self.lengths = [len(e.input_ids) for e in train]
        self.micro_per_step = config.gradient_accumulation_steps * self.dist.world_size
        micro_batches = math.ceil(len(train) / config.batch_size)
        self.steps_per_epoch = math.ceil(micro_batches / self.micro_per_step)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        warmup = (config.warmup_steps if config.warmup_steps is not None
                  else math.ceil(config.warmup_ratio * self.total_steps))

        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(warmup, self.total_steps, config.min_lr_ratio))
        self._plans: dict[int, list[list[int]]] = {}

        self.step = 0
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.history: list[dict] = []
        self.tokens_seen = 0
        self.elapsed_s = 0.0
        self.best_snapshot: dict | None = None

    # -- data order ----------------------------------------------------------------------------

    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.lengths, self.config.batch_size, self.config.seed,
                                             epoch, self.config.length_group_factor)}
        return self._plans[epoch]

    def step_micro_batches(self, step: int) -> list[list[int]]:
        """Return the global micro-batches of an optimizer step. Rank r trains on items r, r + W, ..."""
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.micro_per_step
        return self._plan(epoch)[start:start + self.micro_per_step]

    def _supervised_count(self, batches: list[list[int]]) -> int:
        return sum(self.train_examples[i].supervised_targets for batch in batches for i in batch)

    # -- collectives ---------------------------------------------------------------------------

    def _all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.dist.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def _reduce_gradients(self, loss_sum: float) -> float:
        """Sum gradients and the step loss across ranks in one flat buffer."""
        if not self.dist.distributed:
            return loss_sum
        grads = []
        for param in self.parameters:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad.reshape(-1))
        flat = torch.cat(grads + [torch.tensor([loss_sum], dtype=grads[0].dtype, device=self.device)])
        self._all_reduce(flat)
        offset = 0
        for param in self.parameters:
            count = param.numel()
            param.grad.copy_(flat[offset:offset + count].view_as(param))
            offset += count
        return float(flat[-1])

    def _broadcast_parameters(self) -> None:
        if self.dist.distributed:
            import torch.distributed as dist

            with torch.no_grad():
                for param in self.parameters:
                    dist.broadcast(param.data, src=0)

    # -- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        if not self.validation_examples:
            return None
        self.model.eval()
        lengths = [len(e.input_ids) for e in self.validation_examples]
        batches = plan_validation(lengths, self.config.batch_size)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in batches[self.dist.rank::self.dist.world_size]:
            input_ids, labels = collate(self.validation_examples, batch, self.pad_id)
            loss_sum, count = self.loss_fn(input_ids.to(self.device), labels.to(self.device))
            totals[0] += float(loss_sum)
            totals[1] += count
        self._all_reduce(totals)
        self.model.train()
        return float(totals[0] / totals[1]) if totals[1] > 0 else None

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict:
        return {"step": self.step, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step, "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early, "history": self.history,
                "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed_s,
                "world_size": self.dist.world_size, "config": self.config.to_dict()}

    def save(self) -> None:
        if self.dist.is_main and self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler,
                            self.state(), self.best_snapshot)
        if self.dist.distributed:
            import torch.distributed as dist

            dist.barrier()

    def resume(self) -> None:
        state, best = load_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler)
        saved_micro = state.get("world_size", 1) * state["config"]["gradient_accumulation_steps"]
        if saved_micro != self.micro_per_step:
            # A step's data position depends on the micro-batches per step, so it must not change.
            raise ConfigError(
                f"checkpoint {self.checkpoint_dir} was written with {saved_micro} micro-batches per "
                f"step (world size x gradient accumulation) and this run has {self.micro_per_step}; "
                "resume with the same product, e.g. the same number of processes")
        if state.get("total_steps") != self.total_steps:
            log.warning("resuming with %s total steps where the checkpoint planned %s",
                        self.total_steps, state.get("total_steps"))
        self.step = state["step"]
        self.best_val_loss = state.get("best_val_loss")
        self.best_step = state.get("best_step")
        self.bad_evals = state.get("bad_evals", 0)
        self.stopped_early = state.get("stopped_early", False)
        self.history = state.get("history", [])
        self.tokens_seen = state.get("tokens_seen", 0)
        self.elapsed_s = state.get("elapsed_s", 0.0)
        self.best_snapshot = best

    # -- training ------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> dict:
        """Train to total_steps (or early stop); return the final metrics."""
        self.model.train()
        if resume:
            self.resume()
        else:
            self._broadcast_parameters()
        log.info("training %s steps (%s per epoch) from step %s on %s, world size %s",
                 self.total_steps, self.steps_per_epoch, self.step, self.device, self.dist.world_size)

        window_tokens, window_start = 0, time.perf_counter()
        pending_stop: BaseException | None = None
        while self.step < self.total_steps and not self.stopped_early:
            step_start = time.perf_counter()
            learning_rate = self.scheduler.get_last_lr()[0]
            loss, tokens = self._train_step()
            self.step += 1
            step_time = time.perf_counter() - step_start
            self.elapsed_s += step_time
            self.tokens_seen += tokens
            window_tokens += tokens
            record = {"step": self.step, "loss": loss, "lr": learning_rate}

            final = self.step >= self.total_steps
            if self.step % self.config.eval_steps == 0 or final:
                record["val_loss"] = self._evaluate()

            self.history.append(record)
            pending_stop = self._report(record, window_tokens, time.perf_counter() - window_start)
            if time.perf_counter() - window_start > 10.0:
                window_tokens, window_start = 0, time.perf_counter()
            stop = self._any_rank(pending_stop is not None or self.stop_requested())

            if stop or self.stopped_early or final or self.step % self.config.save_steps == 0:
                self.save()
            if stop:
                log.info("training stopped at step %s; checkpoint saved", self.step)
                raise pending_stop or TrainingStopped(f"stopped at step {self.step}")

        return self.metrics()

    def _train_step(self) -> tuple[float, int]:
        batches = self.step_micro_batches(self.step)
        normaliser = max(1, self._supervised_count(batches))
        # Dropout draws from a generator seeded by (seed, step, rank), so a resumed run draws
        # the same masks as an uninterrupted one without carrying every rank's RNG state.
        torch.manual_seed((self.config.seed * 1_000_003 + self.step) * 1009 + self.dist.rank)
        loss_sum = 0.0
        for batch in batches[self.dist.rank::self.dist.world_size]:
            input_ids, labels = collate(self.train_examples, batch, self.pad_id)
            summed, _ = self.loss_fn(input_ids.to(self.device), labels.to(self.device))
            (summed / normaliser).backward()
            loss_sum += float(summed.detach())
        loss_sum = self._reduce_gradients(loss_sum)
        tokens = sum(len(self.train_examples[i].input_ids) for batch in batches for i in batch)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / normaliser, tokens

    def _evaluate(self) -> float | None:
        val_loss = self.validation_loss()
        if val_loss is None:
            return None
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step, self.bad_evals = val_loss, self.step, 0
            self.best_snapshot = {k: v.cpu() for k, v in trainable_state(self.model).items()}
        else:
            self.bad_evals += 1
            if self.config.patience and self.bad_evals >= self.config.patience:
                log.info("early stop at step %s: no validation improvement in %s evaluations "
                         "(best %.4f at step %s)", self.step, self.bad_evals, self.best_val_loss,
                         self.best_step)
                self.stopped_early = True
        return val_loss

    def _report(self, record: dict, window_tokens: int, window_s: float) -> BaseException | None:
        if not self.dist.is_main:
            return None
        tokens_per_s = window_tokens / window_s if window_s > 0 else 0.0
        eta_s = (self.total_steps - self.step) * self.elapsed_s / max(1, len(self.history))
        try:
            self.reporter.on_step(self.step, self.total_steps, record["loss"], tokens_per_s,
                                  eta_s, record["lr"], record.get("val_loss"))
        except Exception as error:   # JobCancelled and the like: checkpoint first, then raise
            from appliance.jobs import JobCancelled

            if isinstance(error, JobCancelled):
                return error
            raise
        return None

    def _any_rank(self, flag: bool) -> bool:
        if not self.dist.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self._all_reduce(value, op="max").item())

    def use_best_weights(self) -> bool:
        """Load the best-validation weights into the model; return whether there were any."""
        if self.best_snapshot is None:
            return False
        load_trainable_state(self.model, self.best_snapshot, "best validation snapshot")
        return True

    def metrics(self) -> dict:
        train_losses = [r["loss"] for r in self.history]
        return {"steps": self.step, "total_steps": self.total_steps,
                "final_loss": train_losses[-1] if train_losses else None,
                "first_loss": train_losses[0] if train_losses else None,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step,
                "final_val_loss": next((r["val_loss"] for r in reversed(self.history)
                                        if r.get("val_loss") is not None), None),
                "stopped_early": self.stopped_early, "tokens_seen": self.tokens_seen,
                "elapsed_s": round(self.elapsed_s, 3),
                "tokens_per_s": self.tokens_seen / self.elapsed_s if self.elapsed_s else None,
                "world_size": self.dist.world_size}
