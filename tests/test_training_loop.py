"""Training loop end to end on a tiny random Gemma 3: jobs, candidates, resume, CLI, errors."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from appliance import jobs  # noqa: E402
from appliance.cli import cli  # noqa: E402
from appliance.errors import ConfigError, NotFoundError  # noqa: E402
from appliance.jobs import JobCancelled  # noqa: E402
from appliance.models import folder_digest  # noqa: E402
from appliance.training.job import read_candidate  # noqa: E402
from appliance.workspace import Workspace  # noqa: E402

# Every test here trains (a tiny random model, seconds each), so all are marked slow.
pytestmark = pytest.mark.slow

VOCAB = 128


def save_tiny_gemma(folder: Path) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, max_position_embeddings=256, sliding_window=16,
                              final_logit_softcapping=30.0, pad_token_id=0)
    Gemma3ForCausalLM(config).save_pretrained(str(folder))
    return folder


def write_dataset(workspace: Workspace, dataset_id: str, base_digest: str, train: int = 24,
                  validation: int = 6, vocab: int = VOCAB, seed: int = 0) -> Path:
    """Write a curated-dataset folder whose sequences follow a learnable pattern."""
    rng = random.Random(seed)
    folder = workspace.artifacts / "datasets" / dataset_id
    (folder / "tokenized").mkdir(parents=True)

    def record() -> dict:
        prompt = [rng.randint(4, vocab - 1) for _ in range(rng.randint(4, 30))]
        # The answer repeats the prompt's first tokens, so a model can learn it.
        answer = prompt[:rng.randint(2, 4)] + [1]
        ids = [2] + prompt + answer
        return {"input_ids": ids, "labels": [-100] * (1 + len(prompt)) + answer}

    for split, count in (("train", train), ("validation", validation)):
        with open(folder / "tokenized" / f"{split}.jsonl", "w") as handle:
            for _ in range(count):
                handle.write(json.dumps(record()) + "\n")
    (folder / "manifest.json").write_text(json.dumps({
        "id": dataset_id, "digest": f"sha256:{dataset_id}-digest", "renderer": "reckon-specialist-v1",
        "base": {"weights_digest": base_digest}}))
    return folder


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture
def workspace(tmp_path, tiny_base) -> Workspace:
    workspace = Workspace.resolve(tmp_path / "ws")
    write_dataset(workspace, "ds-1", folder_digest(tiny_base))
    return workspace


CONFIG = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "batch_size": 4,
          "gradient_accumulation_steps": 2, "max_steps": 8, "eval_steps": 3, "save_steps": 100,
          "learning_rate": 5e-3, "warmup_steps": 2, "seed": 7, "precision": "fp32"}


def train(workspace, tiny_base, listener=None, **overrides):
    params = {"base": str(tiny_base), "dataset": "ds-1", "config": {**CONFIG, **overrides}}
    return jobs.run_inline(workspace, "train", params, listener)


def final_weights(workspace, candidate_id) -> dict:
    return load_file(str(workspace.artifacts / "candidates" / candidate_id / "checkpoint"
                         / "trainable.safetensors"))


def test_train_job_records_candidate(workspace, tiny_base):
    reports = []
    job_id, result = train(workspace, tiny_base, reports.append)
    store = workspace.store()
    assert jobs.get(store, job_id)["status"] == "succeeded"

    candidate_id = result["candidate_id"]
    folder = workspace.artifacts / "candidates" / candidate_id
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    record = read_candidate(workspace, candidate_id)
    assert record["status"] == "trained"
    assert record["base"]["weights_digest"] == folder_digest(tiny_base)
    assert record["dataset"]["digest"] == "sha256:ds-1-digest"
    assert record["config"]["r"] == 4
    assert record["metrics"]["steps"] == 8
    assert record["metrics"]["best_val_loss"] is not None

    row = store.get("candidates", candidate_id)
    assert row["status"] == "trained"
    assert row["identity"]["weights_digest"] == folder_digest(tiny_base)
    assert row["dataset_digest"] == "sha256:ds-1-digest"
    assert row["adapter_path"] == str(folder / "adapter")

    progress = jobs.get(store, job_id)["progress"]
    assert progress["completed"] == 8
    assert progress["total"] == 8
    assert {"loss", "tokens_per_s", "eta_s"} <= set(progress)
    assert [r["completed"] for r in reports] == list(range(1, 9))
    events = [e["data"] for e in store.rows("job_events", "job_id = ?", [job_id]) if e["kind"] == "loss"]
    assert [e["step"] for e in events] == list(range(1, 9))
    assert [e["step"] for e in events if "val_loss" in e] == [3, 6, 8]
    first, last = events[0]["loss"], [e["loss"] for e in events][-1]
    assert last < first


def test_adapter_loads_with_peft(workspace, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, result = train(workspace, tiny_base, max_steps=4, eval_steps=100)
    adapter = Path(result["adapter_path"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"}
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
    plain = base(torch.tensor([[2, 5, 6, 7]])).logits.detach()
    model = PeftModel.from_pretrained(base, str(adapter))
    adapted = model(torch.tensor([[2, 5, 6, 7]])).logits.detach()
    assert not torch.allclose(plain, adapted)
    trained = final_weights(workspace, result["candidate_id"])
    loaded = {name: param for name, param in model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(trained)
    for name, value in trained.items():
        assert torch.equal(loaded[name.replace(".default.", ".default.")], value)


def test_resume_after_sigterm_matches_uninterrupted(workspace, tiny_base):
    _, reference = train(workspace, tiny_base)
    reference_record = read_candidate(workspace, reference["candidate_id"])

    def terminate_at_step_five(report):
        if report.get("completed") == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(JobCancelled):
        train(workspace, tiny_base, terminate_at_step_five)
    store = workspace.store()
    (interrupted,) = [row for row in store.rows("candidates", "status = 'interrupted'")]
    checkpoint = Path(interrupted["checkpoint_path"])
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 5
    assert {"trainable.safetensors", "optimizer.pt", "rng.pt"} <= {p.name for p in checkpoint.iterdir()}

    _, resumed = jobs.run_inline(workspace, "train", {"resume": interrupted["id"]})
    assert resumed["candidate_id"] == interrupted["id"]
    resumed_record = read_candidate(workspace, interrupted["id"])
    assert resumed_record["status"] == "trained"
    assert resumed_record["metrics"]["steps"] == 8

    expected, actual = final_weights(workspace, reference["candidate_id"]), final_weights(workspace, interrupted["id"])
    for name in expected:
        assert torch.allclose(expected[name], actual[name], rtol=1e-6, atol=1e-7), name
    assert resumed_record["metrics"]["final_loss"] == pytest.approx(
        reference_record["metrics"]["final_loss"], rel=1e-6)
    assert resumed_record["metrics"]["best_val_loss"] == pytest.approx(
        reference_record["metrics"]["best_val_loss"], rel=1e-6)


def test_early_stopping_stops_before_max_steps(workspace, tiny_base):
    _, result = train(workspace, tiny_base, learning_rate=3.0, max_steps=30, eval_steps=1,
                      patience=2, warmup_steps=0, max_grad_norm=0.0)
    metrics = result["metrics"]
    assert metrics["stopped_early"] is True
    assert metrics["steps"] < 30
    assert metrics["best_step"] == metrics["steps"] - 2


def test_dataset_with_foreign_token_ids_is_rejected(workspace, tiny_base):
    write_dataset(workspace, "ds-wide", folder_digest(tiny_base), vocab=1000)
    with pytest.raises(ConfigError, match="outside the base's vocabulary"):
        jobs.run_inline(workspace, "train", {"base": str(tiny_base), "dataset": "ds-wide",
                                             "config": CONFIG})


def test_missing_dataset_and_candidate_errors(workspace, tiny_base):
    with pytest.raises(NotFoundError, match="dataset 'nope' not found"):
        jobs.run_inline(workspace, "train", {"base": str(tiny_base), "dataset": "nope", "config": {}})
    with pytest.raises(NotFoundError, match="candidate 'cand-missing' not found"):
        jobs.run_inline(workspace, "train", {"resume": "cand-missing"})


def test_cli_ab_trains_each_rank(workspace, tiny_base):
    runner = CliRunner()
    arguments = ["--home", str(workspace.root), "--json", "train", "--base", str(tiny_base),
                 "--dataset", "ds-1", "--lora-r", "2,4", "--max-steps", "3", "--eval-steps", "3",
                 "--batch-size", "4", "--precision", "fp32"]
    outcome = runner.invoke(cli, arguments, catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert [row["r"] for row in report["candidates"]] == [2, 4]
    assert [row["lora_alpha"] for row in report["candidates"]] == [4, 8]
    best = min(report["candidates"], key=lambda row: row["best_val_loss"])
    assert report["winner"] == best["candidate"]

    listed = runner.invoke(cli, ["--home", str(workspace.root), "--json", "train", "list"])
    assert {row["id"] for row in json.loads(listed.stdout)} == {
        row["candidate"] for row in report["candidates"]}
    shown = runner.invoke(cli, ["--home", str(workspace.root), "--json", "train", "show",
                                report["winner"]])
    assert json.loads(shown.stdout)["status"] == "trained"


def test_cli_rejects_missing_options(workspace):
    runner = CliRunner()
    outcome = runner.invoke(cli, ["--home", str(workspace.root), "train", "--dataset", "ds-1"])
    assert outcome.exit_code != 0
    assert "--base" in outcome.output
    outcome = runner.invoke(cli, ["--home", str(workspace.root), "train", "--base", "embedded",
                                  "--dataset", "ds-1", "--lora-r", "8,x"])
    assert outcome.exit_code != 0
    assert "comma-separated integers" in outcome.output


def test_dataset_for_other_base_is_retokenized(tmp_path):
    """Conversations are tokenised again when tokenized/ was made for another base."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from appliance.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    base = tmp_path / "tiny-full-vocab"
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, max_position_embeddings=512, sliding_window=16,
                              pad_token_id=0)
    Gemma3ForCausalLM(config).save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))

    workspace = Workspace.resolve(tmp_path / "ws")
    folder = workspace.artifacts / "datasets" / "ds-other"
    (folder / "tokenized").mkdir(parents=True)
    (folder / "tokenized" / "train.jsonl").write_text(json.dumps({"input_ids": [1], "labels": [1]}) + "\n")
    rows = []
    for index in range(6):
        rows.append({"messages": [
            {"role": "user", "content": f"Look up order {index}."},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "c", "type": "function",
                "function": {"name": "get_order", "arguments": {"order_id": str(index)}}}]}],
            "tools": [{"type": "function", "function": {
                "name": "get_order", "description": "Fetch an order.",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}}],
            "meta": {"trace_id": f"t{index}", "decision_index": 0}})
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "manifest.json").write_text(json.dumps({
        "digest": "sha256:other", "renderer": "reckon-specialist-v1", "tool_style": "compact",
        "tokenizer": {"weights_digest": "sha256:" + "f" * 64}}))

    _, result = jobs.run_inline(workspace, "train", {"base": str(base), "dataset": "ds-other",
                                                     "config": {**CONFIG, "max_steps": 2}})
    record = read_candidate(workspace, result["candidate_id"])
    assert record["dataset"]["retokenized"] is True
    assert record["dataset"]["train_examples"] == 6
    assert record["dataset"]["renderer"] == "reckon-specialist-v1"
    assert record["status"] == "trained"
