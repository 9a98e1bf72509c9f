"""The real embedded Gemma 3 270M (GGUF, dequantised once into the cache) learns a tool call."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")

from appliance import jobs  # noqa: E402
from appliance.formats import SpecialistRenderer  # noqa: E402
from appliance.models import load_tokenizer, resolve_base  # noqa: E402
from appliance.training.data import tokenize_conversation  # noqa: E402
from appliance.training.job import read_candidate  # noqa: E402

TOOLS = [{"type": "function", "function": {
    "name": "lookup_rate", "description": "Look up an exchange rate.",
    "parameters": {"type": "object", "properties": {"base": {"type": "string"},
                                                    "quote": {"type": "string"}},
                   "required": ["base", "quote"]}}}]
CURRENCIES = ["EUR", "USD", "GBP", "JPY", "CHF", "SEK", "NOK", "CAD"]


def conversation(rng: random.Random) -> list[dict]:
    base, quote = rng.sample(CURRENCIES, 2)
    return [{"role": "user", "content": f"What is the {base} to {quote} rate today?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "lookup_rate", "arguments": {"base": base, "quote": quote}}}]}]


@pytest.mark.slow
def test_embedded_base_loss_falls(workspace):
    base = resolve_base("embedded")
    tokenizer = load_tokenizer("embedded")
    renderer = SpecialistRenderer(tool_style="compact")
    rng = random.Random(0)
    folder = workspace.artifacts / "datasets" / "ds-rates"
    (folder / "tokenized").mkdir(parents=True)
    splits = {"train": [conversation(rng) for _ in range(16)]}
    splits["validation"] = splits["train"][:4]
    for split, conversations in splits.items():
        with open(folder / "tokenized" / f"{split}.jsonl", "w") as handle:
            for messages in conversations:
                example = tokenize_conversation(tokenizer, renderer, messages, TOOLS)
                handle.write(json.dumps({"input_ids": example.input_ids, "labels": example.labels}) + "\n")
    (folder / "manifest.json").write_text(json.dumps({
        "digest": "sha256:rates", "renderer": renderer.name, "base": base.identity}))

    config = {"r": 8, "lora_alpha": 16, "batch_size": 4, "max_steps": 6, "eval_steps": 1,
              "learning_rate": 1e-3, "warmup_steps": 1, "seed": 0}
    # One thread: on a shared 2-core CI host, OpenMP spin-waiting between two threads made
    # each step about 2.7x slower than one thread (measured with torch 2.13, load average 4).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, result = jobs.run_inline(workspace, "train", {"base": "embedded", "dataset": "ds-rates",
                                                         "config": config})
    finally:
        torch.set_num_threads(threads)
    record = read_candidate(workspace, result["candidate_id"])
    checkpoint = json.loads((workspace.artifacts / "candidates" / result["candidate_id"]
                             / "checkpoint" / "state.json").read_text())
    val_losses = [entry["val_loss"] for entry in checkpoint["history"]]
    assert record["base"]["weights_digest"] == base.digest
    assert record["base"]["kind"] == "gguf"
    assert record["metrics"]["steps"] == 6
    assert min(val_losses[1:]) < val_losses[0]
    assert record["metrics"]["final_loss"] < record["metrics"]["first_loss"]
