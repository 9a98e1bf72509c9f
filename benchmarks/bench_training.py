"""Benchmark: this LoRA trainer against TRL's SFTTrainer on the embedded Gemma 3 270M.

Both run in separate subprocesses on the same model (the embedded GGUF, dequantised once into
the reckon cache), the same pre-tokenised dataset (labels -100 outside the assistant action,
so TRL trains on the assistant tokens only), the same LoRA config, batch size, learning-rate
schedule, seed and number of optimizer steps, in bf16 where the hardware supports it.

Reported per trainer: tokens/s over the optimizer steps (model loading excluded), peak RSS
(ru_maxrss of the subprocess, model loading included), final validation loss (mean
cross-entropy over supervised tokens, computed by the same function for both), and achieved
FLOP/s as a fraction of the bf16 matmul peak measured with a torch.matmul loop in this run.
FLOPs are counted the same way for both (useful work only: 4 x linear-layer parameters per
token for a frozen base plus causal attention, and the LM head at supervised tokens alone),
so the fraction compares useful throughput, not the work each implementation chose to do.

TRL settings: gradient checkpointing off (TRL's SFTConfig turns it on by default; neither
side needs it at this size), no packing, default padding, its per-step entropy and token
accuracy logging left at the defaults.

    .venv/bin/python benchmarks/bench_training.py                # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_training.py --steps 30 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from appliance.training.config import TrainConfig  # noqa: E402

TOOLS = [
    {"type": "function", "function": {
        "name": "lookup_rate", "description": "Look up the exchange rate between two currencies.",
        "parameters": {"type": "object", "properties": {
            "base": {"type": "string", "description": "ISO 4217 code of the currency to convert from"},
            "quote": {"type": "string", "description": "ISO 4217 code of the currency to convert to"}},
            "required": ["base", "quote"]}}},
    {"type": "function", "function": {
        "name": "open_ticket", "description": "Open a support ticket for a customer request.",
        "parameters": {"type": "object", "properties": {
            "customer_id": {"type": "string"}, "summary": {"type": "string"},
            "priority": {"type": "string", "enum": ["low", "normal", "high"]}},
            "required": ["customer_id", "summary"]}}},
]
CURRENCIES = ["EUR", "USD", "GBP", "JPY", "CHF", "SEK", "NOK", "CAD", "AUD", "DKK"]
TOPICS = ["a failed card payment", "a duplicate invoice", "an address change", "a locked account",
          "a refund that has not arrived", "a question about fees"]


def conversation(rng: random.Random) -> list[dict]:
    """Build one synthetic decision: a request, optional earlier tool turns, the target call."""
    messages = [{"role": "system", "content": "You are the operations assistant. Use the tools."}]
    if rng.random() < 0.5:
        base, quote = rng.sample(CURRENCIES, 2)
        messages.append({"role": "user", "content": f"Convert 250 {base} into {quote}, please."})
        history = rng.randint(0, 2)
        for _ in range(history):
            other = rng.choice(CURRENCIES)
            messages.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": "h", "type": "function", "function": {
                    "name": "lookup_rate", "arguments": {"base": base, "quote": other}}}]})
            messages.append({"role": "tool", "name": "lookup_rate",
                             "content": json.dumps({"rate": round(rng.uniform(0.1, 9), 4)})})
        arguments = {"base": base, "quote": quote}
        name = "lookup_rate"
    else:
        customer = f"C-{rng.randint(10000, 99999)}"
        topic = rng.choice(TOPICS)
        messages.append({"role": "user", "content": f"Customer {customer} wrote in about {topic}. "
                                                    "Please log it for the support team."})
        arguments = {"customer_id": customer, "summary": topic.capitalize(),
                     "priority": rng.choice(["low", "normal", "high"])}
        name = "open_ticket"
    messages.append({"role": "assistant", "content": None, "tool_calls": [{
        "id": "t", "type": "function", "function": {"name": name, "arguments": arguments}}]})
    return messages


def build_dataset(folder: Path, train: int, validation: int, seed: int) -> dict:
    from appliance.formats import SpecialistRenderer
    from appliance.models import load_tokenizer
    from appliance.training.data import tokenize_conversation

    tokenizer = load_tokenizer("embedded")
    renderer = SpecialistRenderer(tool_style="full")
    rng = random.Random(seed)
    sizes = {}
    for split, count in (("train", train), ("validation", validation)):
        rows = []
        for _ in range(count):
            example = tokenize_conversation(tokenizer, renderer, conversation(rng), TOOLS)
            rows.append({"input_ids": example.input_ids, "labels": example.labels})
        with open(folder / f"{split}.jsonl", "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        sizes[split] = {"examples": count,
                        "mean_tokens": sum(len(r["input_ids"]) for r in rows) / count}
    return sizes


def measure_matmul_peak(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * count / (time.perf_counter() - start)


# -- shared by both workers -----------------------------------------------------------------------

def useful_flops(sequences: list[tuple[int, int]], config) -> float:
    """FLOPs of a LoRA step over (length, supervised targets) sequences, frozen base, no recompute."""
    layers = config.num_hidden_layers
    hidden = config.hidden_size
    attention_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    linear = layers * (hidden * attention_width * 2 + hidden * kv_width * 2
                       + 3 * hidden * config.intermediate_size)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    total = 0.0
    for length, supervised in sequences:
        total += 4 * linear * length                         # forward + input gradient
        for kind in layer_types:
            context = min(length, window) if kind == "sliding_attention" and window else length
            # QK^T and AV, causal (half), forward once and backward twice
            total += 3 * 2 * 2 * length * context / 2 * attention_width
        total += 4 * hidden * config.vocab_size * supervised  # head forward + input gradient
    return total


def validation_loss(model, examples, batch_size: int) -> float:
    import torch

    from appliance.training.data import collate, plan_validation
    from appliance.training.trainer import SupervisedLoss

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    loss_fn = SupervisedLoss(causal_lm)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in plan_validation([len(e.input_ids) for e in examples], batch_size):
            input_ids, labels = collate(examples, batch, 0)
            summed, supervised = loss_fn(input_ids, labels)
            total += float(summed)
            count += supervised
    return total / count


def load_model(precision: str):
    import torch

    from appliance.models import resolve_base
    from appliance.training.bases import load_base_model
    from appliance.training.trainer import pick_dtype

    dtype = pick_dtype(precision, "cuda:0" if torch.cuda.is_available() else "cpu")
    model = load_base_model(resolve_base("embedded"), dtype)
    if torch.cuda.is_available():
        model = model.cuda()
    return model, dtype


def worker_ours(args) -> dict:
    import torch
    from peft import get_peft_model

    from appliance.training.config import TrainConfig
    from appliance.training.data import read_tokenized
    from appliance.training.trainer import DistributedInfo, LoraTrainer

    train = read_tokenized(Path(args.data) / "train.jsonl")
    validation = read_tokenized(Path(args.data) / "validation.jsonl")
    model, dtype = load_model(args.precision)
    config = TrainConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                         batch_size=args.batch_size, max_steps=args.steps, learning_rate=args.lr,
                         warmup_steps=args.warmup, eval_steps=10 ** 9, save_steps=10 ** 9,
                         seed=args.seed, precision=args.precision,
                         length_group_factor=args.length_group_factor)
    torch.manual_seed(args.seed)
    peft_model = get_peft_model(model, config.lora_config())
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    trainer = LoraTrainer(peft_model, config, train, [], pad_id=0, checkpoint_dir=None,
                          dist=DistributedInfo(device=device))
    metrics = trainer.train()
    seen = [(len(train[i].input_ids), train[i].supervised_targets)
            for step in range(args.steps) for batch in trainer.step_micro_batches(step) for i in batch]
    return {"train_s": metrics["elapsed_s"], "tokens": metrics["tokens_seen"],
            "first_loss": metrics["first_loss"], "final_train_loss": metrics["final_loss"],
            "val_loss": validation_loss(peft_model, validation, args.batch_size),
            "flops": useful_flops(seen, model.config), "dtype": str(dtype)}


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from appliance.models import load_tokenizer
    from appliance.training.config import DEFAULT_TARGET_MODULES
    from appliance.training.data import read_tokenized

    train = read_tokenized(Path(args.data) / "train.jsonl")
    validation = read_tokenized(Path(args.data) / "validation.jsonl")
    model, dtype = load_model(args.precision)
    tokenizer = load_tokenizer("embedded")
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in train])
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                      target_modules=list(DEFAULT_TARGET_MODULES), bias="none", task_type="CAUSAL_LM")
    output = tempfile.mkdtemp(prefix="bench-trl-")
    sft = SFTConfig(output_dir=output, per_device_train_batch_size=args.batch_size,
                    gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=args.lr,
                    lr_scheduler_type="cosine", warmup_steps=args.warmup, weight_decay=0.0,
                    max_grad_norm=1.0, bf16=dtype == torch.bfloat16, logging_steps=1,
                    save_strategy="no", report_to=[], seed=args.seed, max_length=None,
                    gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(),
                    dataloader_num_workers=0)
    torch.manual_seed(args.seed)
    trainer = SFTTrainer(model=model, args=sft, train_dataset=dataset, peft_config=lora,
                         processing_class=tokenizer)

    seen: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counting_collator(features):
        for feature in features:
            labels = feature["labels"]
            seen.append((len(feature["input_ids"]), sum(1 for v in labels[1:] if v != -100)))
        return collate(features)

    trainer.data_collator = counting_collator
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"train_s": result.metrics["train_runtime"], "tokens": sum(n for n, _ in seen),
            "first_loss": losses[0] if losses else None,
            "final_train_loss": losses[-1] if losses else None,
            "val_loss": validation_loss(trainer.model, validation, args.batch_size),
            "flops": useful_flops(seen[:args.steps * args.batch_size], model.config),
            "dtype": str(dtype)}


def run_worker(name: str, args, data: Path) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--data", str(data),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--lora-r", str(args.lora_r), "--lr", str(args.lr), "--warmup", str(args.warmup),
               "--seed", str(args.seed), "--precision", args.precision, "--threads", str(args.threads),
               "--length-group-factor", str(args.length_group_factor)]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{completed.stderr[-5000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--validation-examples", type=int, default=16)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in both workers and the matmul peak [default: torch's "
                             "choice]; on an oversubscribed machine 1 avoids OpenMP spin-waiting")
    parser.add_argument("--length-group-factor", type=int, default=TrainConfig.length_group_factor,
                        help="this trainer's length grouping (sequences sorted within groups of "
                             "batch size x this)")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        from appliance.netguard import enforce_offline

        enforce_offline()
        result = (worker_ours if args.worker == "ours" else worker_trl)(args)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    from appliance.netguard import enforce_offline

    enforce_offline()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-training-") as temporary:
        data = Path(temporary)
        sizes = build_dataset(data, args.train_examples, args.validation_examples, args.seed)
        # Build the dequantised cache outside the timed workers.
        load_model(args.precision)
        peaks = {name: measure_matmul_peak(name) for name in ("bfloat16", "float32")}
        results = {name: run_worker(name, args, data) for name in ("ours", "trl")}

    peak = peaks["bfloat16"] if "bfloat16" in results["ours"]["dtype"] else peaks["float32"]
    print(f"machine: {os.cpu_count()} CPU threads ({torch.get_num_threads()} used by torch), "
          f"torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machines make throughput noisy)")
    print(f"dataset: {sizes['train']['examples']} train sequences, mean "
          f"{sizes['train']['mean_tokens']:.0f} tokens; {args.steps} steps x {args.batch_size} sequences, "
          f"LoRA r={args.lora_r}")
    print(f"matmul peak: bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s")
    print(f"{'trainer':8} {'dtype':15} {'tokens/s':>9} {'peak RSS MiB':>13} {'first loss':>11} "
          f"{'val loss':>9} {'FLOP/s frac':>12}")
    for name, result in results.items():
        result["tokens_per_s"] = result["tokens"] / result["train_s"]
        result["flops_fraction"] = result["flops"] / result["train_s"] / peak
        print(f"{name:8} {result['dtype']:15} {result['tokens_per_s']:9.1f} {result['peak_rss_mib']:13.0f} "
              f"{result['first_loss']:11.4f} {result['val_loss']:9.4f} {result['flops_fraction']:12.3f}")
    ratio = results["ours"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    print(f"throughput ratio ours/TRL: {ratio:.2f}x (target 3x); validation loss ours - TRL: "
          f"{results['ours']['val_loss'] - results['trl']['val_loss']:+.4f} (target <= 0)")
    print(json.dumps({"peaks": peaks, "results": results, "ratio": ratio, "args": vars(args)}))


if __name__ == "__main__":
    main()
