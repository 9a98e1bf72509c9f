"""The whole funnel: traces in, a versioned, tokenised dataset folder out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import jobs
from appliance.cli import cli
from appliance.curation import dataset, pipeline
from appliance.errors import NotFoundError, ReckonError
from appliance.formats import END, SpecialistRenderer
from appliance.models import load_tokenizer
from tests.curation_fixtures import TraceFactory, scriptable_tasks

IGNORE = -100


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


@pytest.fixture
def filled(workspace):
    store = workspace.store()
    factory = TraceFactory(store, run_id="run-a")
    tasks = scriptable_tasks(40, seed=11)
    for task in tasks[:30]:
        factory.correct_trace(task, sample_index=0)
        factory.correct_trace(task, sample_index=1)
    for task in tasks[30:]:
        factory.correct_trace(task, run_id="run-b")
    return workspace, store


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_curate_writes_versioned_dataset(filled, tokenizer):
    workspace, store = filled
    config = pipeline.CurationConfig(runs=["run-a", "run-b"], floors=["outcome=escalate:20"],
                                     validation_fraction=0.3)
    result = pipeline.curate(store, workspace, config, tokenizer=tokenizer)
    folder = Path(result["path"])
    assert folder.parent == workspace.artifacts / "datasets"
    assert folder.name == result["dataset_id"]
    assert result["dataset_id"].startswith("ds-")
    assert len(result["dataset_id"]) == 15

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["digest"].split(":")[1][:12] == result["dataset_id"][3:]
    assert manifest["source_runs"] == ["run-a", "run-b"]
    assert manifest["pack"]["id"] == "entitlements"
    assert manifest["renderer"] == SpecialistRenderer.name
    assert manifest["prompt_kind"] == "compact"
    assert manifest["tool_style"] == "compact"
    assert manifest["max_length"] == 1024
    assert manifest["tokenizer"]["end_of_turn_id"] == 106
    assert [f["filter"] for f in manifest["filters"]] == [
        "verification", "rejection_sampling", "decision_split", "near_duplicate_requests",
        "exact_duplicate_examples", "leakage_guard", "balance", "render_and_fit"]
    assert all({"in", "out"} <= set(f) for f in manifest["filters"])
    assert manifest["funnel"]["traces_in"] == 70
    assert set(manifest["balance"]["before"]) == {"tool", "rule", "outcome"}
    # No token may start in the prompt and end in the target: that target text would go
    # unsupervised, and serving would tokenise the boundary differently.
    assert manifest["tokenization"]["boundary_straddles"] == 0

    train = read_lines(folder / "train.jsonl")
    validation = read_lines(folder / "validation.jsonl")
    tokenized_train = read_lines(folder / "tokenized" / "train.jsonl")
    tokenized_validation = read_lines(folder / "tokenized" / "validation.jsonl")
    assert len(train) == len(tokenized_train) == manifest["split_sizes"]["train"]
    assert len(validation) == len(tokenized_validation) == manifest["split_sizes"]["validation"]
    assert validation, "the split held no task out"

    pack_prompt = pipeline.load_pack("entitlements").prompts["compact"]
    renderer = SpecialistRenderer(tool_style="compact")
    for example, row in zip(train + validation, tokenized_train + tokenized_validation):
        assert set(example) == {"messages", "tools", "meta"}
        assert example["messages"][0] == {"role": "system", "content": pack_prompt}
        assert example["messages"][-1]["role"] == "assistant"
        assert {"trace_id", "task_id", "decision_index", "tool", "outcome", "rules",
                "repeat"} <= set(example["meta"])
        assert set(row) == {"input_ids", "labels"}
        supervised = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
        rendered = renderer.render(example["messages"], example["tools"])
        start, end = rendered.supervised_spans[-1]
        assert tokenizer.decode(supervised) == rendered.text[start:end]
        assert rendered.text[start:end].endswith(END)
        assert len(row["input_ids"]) <= 1024

    # Balance: escalations repeat in train as whole lines, and never in validation.
    escalations = [e for e in train if e["meta"]["outcome"] == "escalate"]
    assert escalations and all(e["meta"]["repeat"] > 1 for e in escalations)
    copies = {}
    for e in escalations:
        copies.setdefault((e["meta"]["trace_id"], e["meta"]["decision_index"]), []).append(
            e["meta"]["copy"])
    assert all(sorted(c) == list(range(len(c))) for c in copies.values())
    assert all(e["meta"]["repeat"] == 1 for e in validation)

    # Split by task: no task on both sides.
    assert not ({e["meta"]["task_id"] for e in train} & {e["meta"]["task_id"] for e in validation})

    # The datasets table and the folder's own digest check.
    row = store.get("datasets", result["dataset_id"])
    assert row["path"] == str(folder)
    assert row["n_train"] == len(train)
    assert dataset.verify_folder(folder)["id"] == result["dataset_id"]
    assert not os.access(folder / "train.jsonl", os.W_OK) or os.geteuid() == 0
    assert (os.stat(folder / "train.jsonl").st_mode & 0o222) == 0


def test_same_content_same_id(filled, tokenizer):
    workspace, store = filled
    config = pipeline.CurationConfig(runs=["run-a"])
    first = pipeline.curate(store, workspace, config, tokenizer=tokenizer)
    manifest_before = (Path(first["path"]) / "manifest.json").read_text()
    second = pipeline.curate(store, workspace, config, tokenizer=tokenizer)
    assert second["dataset_id"] == first["dataset_id"]
    assert (Path(first["path"]) / "manifest.json").read_text() == manifest_before
    other = pipeline.curate(store, workspace, pipeline.CurationConfig(runs=["run-a"], max_length=900),
                            tokenizer=tokenizer)
    assert other["dataset_id"] != first["dataset_id"]
    leftovers = [p for p in (workspace.artifacts / "datasets").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_tampered_folder_detected(filled, tokenizer):
    workspace, store = filled
    result = pipeline.curate(store, workspace, pipeline.CurationConfig(runs=["run-b"]),
                             tokenizer=tokenizer)
    path = Path(result["path"]) / "validation.jsonl"
    os.chmod(path, 0o644)
    path.write_text(path.read_text() + "\n")
    with pytest.raises(ReckonError, match="does not match"):
        dataset.verify_folder(Path(result["path"]))


def test_curate_errors(filled):
    workspace, store = filled
    with pytest.raises(NotFoundError, match="run-missing"):
        pipeline.plan(store, pipeline.CurationConfig(runs=["run-missing"]))
    with pytest.raises(ReckonError, match="DIMENSION"):
        pipeline.plan(store, pipeline.CurationConfig(floors=["escalate:5"]))
    with pytest.raises(ReckonError, match="prompt kind"):
        pipeline.curate(store, workspace, pipeline.CurationConfig(prompt_kind="short"))


def test_curate_job_and_cli(filled):
    workspace, store = filled
    job_id, result = jobs.run_inline(workspace, "curate", {"all": True, "caps": ["tool=refuse:3"]})
    assert store.get("jobs", job_id)["status"] == "succeeded"
    assert result["funnel"]["traces_in"] == 70
    cap = next(entry for entry in result["balance"]["caps"] if entry["category"] == "tool=refuse")
    assert cap["after"] <= 3

    runner = CliRunner()
    output = runner.invoke(cli, ["--home", str(workspace.root), "--json", "curate", "--runs",
                                 "run-b", "--max-length", "1024"])
    assert output.exit_code == 0, output.output
    report = json.loads(output.output)
    assert report["funnel"]["traces_in"] == 10
    assert set(report["funnel"]) == {"traces_in", "verified", "selected", "split",
                                     "deduplicated", "leakage_dropped", "balanced", "rendered"}

    output = runner.invoke(cli, ["--home", str(workspace.root), "curate", "--runs", "run-b"])
    assert output.exit_code == 0, output.output
    assert "Curation funnel" in output.output
    assert "traces in" in output.output

    output = runner.invoke(cli, ["--home", str(workspace.root), "curate", "--all",
                                 "--floor", "colour=red:1"])
    assert output.exit_code != 0
    assert "dimension" in str(output.exception)

    output = runner.invoke(cli, ["--home", str(workspace.root), "curate"])
    assert output.exit_code != 0
    assert "--runs" in str(output.exception)


def test_workers_give_same_plan(filled):
    _, store = filled
    single = pipeline.plan(store, pipeline.CurationConfig())
    parallel = pipeline.plan(store, pipeline.CurationConfig(workers=2))
    assert parallel.funnel == single.funnel
    assert [(e.trace_id, e.decision_index, e.split, e.repeat) for e in parallel.examples] == \
        [(e.trace_id, e.decision_index, e.split, e.repeat) for e in single.examples]


def test_runs_of_two_packs_rejected(filled, tiny_pack):
    workspace, store = filled
    other = TraceFactory(store, tiny_pack, run_id="run-tiny")
    task = {"id": "tiny-1", "request": "What is 1 + 2?", "expected": {"sum": 3}}
    other.insert(task, other.conversation(task["request"], [("add", {"a": 1, "b": 2})]))
    with pytest.raises(ReckonError, match="2 packs"):
        pipeline.plan(store, pipeline.CurationConfig())
    with pytest.raises(ReckonError, match="does not match"):
        pipeline.plan(store, pipeline.CurationConfig(runs=["run-tiny"], pack="entitlements"))


def test_tokenize_examples_rereads_dataset(filled, tokenizer):
    from appliance.curation import render

    workspace, store = filled
    result = pipeline.curate(store, workspace, pipeline.CurationConfig(runs=["run-b"]),
                             tokenizer=tokenizer)
    folder = Path(result["path"])
    examples = dataset.read_examples(folder, "train")
    rows, report = render.tokenize_examples(examples, tokenizer,
                                            render.choose_renderer(tokenizer), 1024)
    stored = read_lines(folder / "tokenized" / "train.jsonl")
    assert [row["input_ids"] for row in rows] == [row["input_ids"] for row in stored]
    assert [row["labels"] for row in rows] == [row["labels"] for row in stored]
    assert report["tokenized"] == len(examples)


def test_korean_answer_round_trip(workspace, tokenizer):
    from tests.curation_fixtures import rate_task

    store = workspace.store()
    factory = TraceFactory(store, run_id="run-ko")
    task = rate_task("t-ko", "코스탈 호스피탈리티 어워드 Level 1 기본 시급은 얼마인가요?")
    answer = f"기본 시급은 {task['expected']['rate']['value']:g} AUD입니다 😀"
    calls = factory.rate_calls(task["expected"]["rate"], answer=answer)
    factory.insert(task, factory.conversation(task["request"], calls))
    result = pipeline.curate(store, workspace, pipeline.CurationConfig(validation_fraction=0.0),
                             tokenizer=tokenizer)
    raw = (Path(result["path"]) / "train.jsonl").read_text(encoding="utf-8")
    assert answer in raw
    assert "\\u" not in raw
    final = [json.loads(line) for line in raw.splitlines()][-1]
    assert final["messages"][-1]["tool_calls"][0]["function"]["arguments"]["answer"] == answer
    row = read_lines(Path(result["path"]) / "tokenized" / "train.jsonl")[-1]
    supervised = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
    assert answer in tokenizer.decode(supervised)
