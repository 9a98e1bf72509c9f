"""Eval runner mechanics with scripted runtimes, result storage and the eval CLI.

Scripted runtimes replay fixed text through the real parser, the real pack tools and the
real checker, so the aggregation of known outputs can be checked exactly. The real
embedded model runs in test_eval_runner_real.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from click.testing import CliRunner

from appliance.chat import ToolCall
from appliance.cli import cli
from appliance.errors import NotFoundError, ReckonError
from appliance.evaluation.compare import ComparisonError
from appliance.evaluation.evalset import EvalSetTamperedError, evalsets_root, freeze_evalset
from appliance.evaluation.runner import (RESULTS_TABLE, evaluate, first_decision_case,
                                         list_results, load_result)
from appliance.packs import load_pack
from appliance.runtimes import Sampling
from appliance.runtimes.base import CompletionRuntime
from tests.support.scripted import ScriptedRuntime, call

PACK = load_pack("entitlements")
CASES_PER_CATEGORY = 2


def _subset_lines() -> list[dict]:
    """The first cases of every category of the shipped held-out set."""
    chosen: dict[str, list[dict]] = {}
    for line in PACK.evalset_path.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        bucket = chosen.setdefault(case["category"], [])
        if len(bucket) < CASES_PER_CATEGORY:
            bucket.append(case)
    return [case for bucket in chosen.values() for case in bucket]


SUBSET = _subset_lines()


@pytest.fixture
def evalset_file(tmp_path):
    path = tmp_path / "subset.jsonl"
    path.write_text("".join(json.dumps(case) + "\n" for case in SUBSET), encoding="utf-8")
    return path


def _concrete(possible: list, schema: dict):
    for value in possible:
        if value not in ("", "$any"):
            return value
    return [] if schema.get("type") == "array" else "Noted."


def _expected_call(case: dict, step: int) -> str:
    sequence = case.get("expected_calls") or case["ground_truth"]
    ((name, arguments),) = sequence[min(step, len(sequence) - 1)].items()
    properties = PACK.tools[name].parameters["properties"]
    values = {argument: _concrete(possible, properties[argument])
              for argument, possible in arguments.items()
              if "" not in possible or any(v not in ("", "$any") for v in possible)}
    return call(name, **values)


class OracleRuntime(CompletionRuntime):
    """Answers every step with the case's expected call, found by the request in the prompt."""

    kind = "oracle"

    def __init__(self, cases: list[dict], tool_style: str = "full"):
        super().__init__(tool_style=tool_style)
        self.cases = cases

    def identity(self) -> dict:
        return {"kind": self.kind, "model": "oracle", "weights_digest": None,
                "adapter_digest": None}

    def complete(self, prompt: str, sampling: Sampling):
        case = next(case for case in self.cases
                    if case["question"][0][-1]["content"] in prompt)
        # Earlier actions of this conversation follow the request, one tool call each.
        history = prompt[prompt.index(case["question"][0][-1]["content"]):]
        step = history.count("<tool_call>")
        output = _expected_call(case, step)
        return output, len(prompt) // 4, len(output) // 4, "stop"


def _metric(summary: dict, name: str) -> float | None:
    return summary["metrics"][name]["value"]


# -- aggregation ---------------------------------------------------------------------------


def test_oracle_scores_full_marks(workspace, evalset_file):
    result = evaluate(workspace, evalset=evalset_file, runtime=OracleRuntime(SUBSET),
                      mode="both", batch_size=3, max_steps=4)

    first = result["summary"]["first_decision"]
    assert first["n_cases"] == len(SUBSET)
    assert _metric(first, "tool_name_accuracy") == 1.0
    assert _metric(first, "exact_call_accuracy") == 1.0
    assert _metric(first, "refusal_accuracy") == 1.0
    assert _metric(first, "format_error_rate") == 0.0

    task = result["summary"]["task"]
    assert _metric(task, "tool_name_accuracy") == 1.0
    assert _metric(task, "exact_call_accuracy") == 1.0
    assert task["failures"]["step_limit"] == 0
    assert result["primary_part"] == "task"
    assert [case["case_id"] for case in result["cases"]] == [case["id"] for case in SUBSET]


def test_wrong_tool_scores_zero(workspace, evalset_file):
    runtime = ScriptedRuntime([call("final_answer", answer="It depends.", citations=[])])
    result = evaluate(workspace, evalset=evalset_file, runtime=runtime, mode="first")

    first = result["summary"]["first_decision"]
    assert _metric(first, "tool_name_accuracy") == 0.0
    assert _metric(first, "exact_call_accuracy") == 0.0
    assert _metric(first, "refusal_accuracy") == 0.0
    assert first["metrics"]["tool_name_accuracy"]["n"] == len(SUBSET)
    assert first["failures"]["wrong_tool"] + first["failures"]["missed_refusal"] == len(SUBSET)
    assert "task" not in result["parts"]


def test_unparseable_output_is_format_error(workspace, evalset_file):
    runtime = ScriptedRuntime(['<tool_call>{"name": "lookup_rate", "arguments": {'])
    result = evaluate(workspace, evalset=evalset_file, runtime=runtime, mode="first", limit=4)

    first = result["summary"]["first_decision"]
    assert first["n_cases"] == 4
    assert _metric(first, "format_error_rate") == 1.0
    # A case that expects no call (refusal, irrelevance) passes on unparseable output, as
    # BFCL's irrelevance rule has it; every other case fails as unparseable.
    cases = result["parts"]["first_decision"]["cases"]
    expecting_calls = sum(1 for case in cases if case["expected_outcome"] == "answer")
    assert expecting_calls >= 1
    assert first["failures"]["unparseable_output"] == expecting_calls


def test_loop_hits_step_limit(workspace, evalset_file):
    runtime = ScriptedRuntime([call("search_guidance", query="breaks")])
    result = evaluate(workspace, evalset=evalset_file, runtime=runtime, mode="task",
                      limit=3, max_steps=2)

    task = result["summary"]["task"]
    assert task["failures"]["step_limit"] == 3
    assert all(case["observed_outcome"] == "step_limit" for case in result["cases"])
    assert all(case["output"]["steps"] == 2 for case in result["cases"])


def test_tokens_sum_over_steps(workspace, evalset_file):
    runtime = ScriptedRuntime([call("search_guidance", query="breaks")])
    result = evaluate(workspace, evalset=evalset_file, runtime=runtime, mode="task",
                      limit=1, max_steps=3)

    case = result["cases"][0]
    output_tokens = len(call("search_guidance", query="breaks")) // 4
    assert len(runtime.prompts) == 3
    assert case["prompt_tokens"] == sum(len(prompt) // 4 for prompt in runtime.prompts)
    assert case["completion_tokens"] == 3 * output_tokens
    assert result["summary"]["task"]["tokens"]["mean"] == case["prompt_tokens"] + case["completion_tokens"]


def test_task_part_records_rule_verdicts(workspace, evalset_file):
    result = evaluate(workspace, evalset=evalset_file, runtime=OracleRuntime(SUBSET),
                      mode="task", limit=2, max_steps=4)

    verdicts = result["cases"][0]["rule_verdicts"]
    assert "task" in verdicts
    assert {rule.id for rule in PACK.rules} <= set(verdicts)


def test_first_decision_uses_first_expected_call():
    from appliance.evaluation.evalset import EvalCase

    multi = next(case for case in SUBSET if case.get("expected_calls"))
    derived = first_decision_case(EvalCase.from_dict(multi), PACK)

    assert derived.expected_calls is None
    assert derived.ground_truth == [multi["expected_calls"][0]]
    assert derived.expected_outcome == "answer"


# -- storage and identity ------------------------------------------------------------------


def test_result_is_stored(workspace, evalset_file):
    runtime = OracleRuntime(SUBSET)
    result = evaluate(workspace, evalset=evalset_file, runtime=runtime, mode="first",
                      label="oracle")

    path = workspace.artifacts / "evals" / f"{result['id']}.json"
    assert path.is_file()
    assert json.loads(path.read_text(encoding="utf-8"))["id"] == result["id"]
    rows = list_results(workspace)
    assert [row["id"] for row in rows] == [result["id"]]
    row = workspace.store().get(RESULTS_TABLE, result["id"])
    assert row["label"] == "oracle"
    assert row["evalset_digest"] == result["evalset"]["digest"]
    assert row["summary"]["first_decision"]["n_cases"] == len(SUBSET)
    assert load_result(workspace, "oracle")["id"] == result["id"]
    assert load_result(workspace, str(path))["id"] == result["id"]


def test_result_records_identity(workspace, evalset_file):
    runtime = OracleRuntime(SUBSET, tool_style="compact")
    result = evaluate(workspace, evalset=evalset_file, runtime=runtime, mode="first",
                      prompt="compact", tool_style="compact", runtime_spec="ignored",
                      sampling=Sampling(max_tokens=64, seed=3))
    frozen = freeze_evalset(evalset_file, workspace)

    assert result["evalset"]["digest"] == frozen.digest
    assert {"weights_digest", "adapter_digest"} <= set(result["model"])
    settings = result["settings"]
    assert settings["renderer"] == "reckon-specialist-v1"
    assert settings["prompt"] == "compact"
    assert settings["tool_style"] == "compact"
    assert settings["sampling"]["max_tokens"] == 64
    assert settings["sampling"]["seed"] == 3
    text = runtime.renderer.render([{"role": "system", "content": PACK.prompts["compact"]}],
                           PACK.openai_tools()).text
    assert settings["prompt_sha256"] == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert result["pack"] == {"id": PACK.id, "version": PACK.version, "digest": PACK.digest}
    assert result["created_at"] > 0


def test_tampered_evalset_is_rejected(workspace, evalset_file):
    frozen = freeze_evalset(evalset_file, workspace, name="subset")
    cases_file = evalsets_root(workspace) / frozen.digest.split(":", 1)[1] / "cases.jsonl"
    os.chmod(cases_file, stat.S_IRUSR | stat.S_IWUSR)
    text = cases_file.read_text(encoding="utf-8")
    cases_file.write_text(text.replace("Level 1", "Level 2", 1), encoding="utf-8")

    with pytest.raises(EvalSetTamperedError, match="modified after freezing"):
        evaluate(workspace, evalset="subset", runtime=OracleRuntime(SUBSET), mode="first")
    assert list_results(workspace) == []


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"mode": "all"}, "mode must be one of"),
    ({"prompt": "short"}, "prompt must be one of"),
    ({"tool_style": "json"}, "tool style must be one of"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"limit": 0}, "limit must be at least 1"),
    ({"max_steps": 0}, "max steps must be at least 1"),
])
def test_invalid_settings_rejected(workspace, evalset_file, settings, message):
    with pytest.raises(ReckonError, match=message):
        evaluate(workspace, evalset=evalset_file, runtime=OracleRuntime(SUBSET), **settings)


def test_unknown_evalset_rejected(workspace):
    with pytest.raises(NotFoundError, match="no frozen eval set named 'missing'"):
        evaluate(workspace, evalset="missing", runtime=OracleRuntime(SUBSET))


def test_missing_evalset_file_rejected(workspace, tmp_path):
    with pytest.raises(NotFoundError, match="eval set file .*absent.jsonl not found"):
        evaluate(workspace, evalset=tmp_path / "absent.jsonl", runtime=OracleRuntime(SUBSET))


def test_runtime_tool_style_mismatch_rejected(workspace, evalset_file):
    with pytest.raises(ReckonError, match="lists tools in style 'full'"):
        evaluate(workspace, evalset=evalset_file, runtime=OracleRuntime(SUBSET),
                 tool_style="none")


def test_unknown_result_rejected(workspace):
    with pytest.raises(NotFoundError, match="eval result 'nope' not found"):
        load_result(workspace, "nope")


# -- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def two_results(workspace, evalset_file):
    good = evaluate(workspace, evalset=evalset_file, runtime=OracleRuntime(SUBSET),
                    mode="both", label="oracle", max_steps=4)
    wrong = ScriptedRuntime([call("final_answer", answer="It depends.", citations=[])])
    bad = evaluate(workspace, evalset=evalset_file, runtime=wrong, mode="both",
                   label="wrong-tool", max_steps=4)
    return good, bad


def _invoke(workspace, *arguments):
    # A wide terminal keeps rich from folding ids across table lines.
    return CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["--home", str(workspace.root), *arguments],
                                                    catch_exceptions=False)


def test_compare_cli_json(workspace, two_results):
    good, bad = two_results
    outcome = _invoke(workspace, "eval", "compare", good["id"], bad["id"], "--json",
                      "--critical", "tool_name_accuracy,exact_call_accuracy", "--tolerance", "2")

    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert set(report["parts"]) == {"first_decision", "task"}
    assert report["gate_passed"] is False
    first = report["parts"]["first_decision"]
    rows = {row["key"]: row for row in first["metrics"]}
    assert rows["tool_name_accuracy"]["values"][0]["value"] == 1.0
    assert rows["tool_name_accuracy"]["values"][1]["value"] == 0.0
    assert rows["tool_name_accuracy"]["changes"][1] == pytest.approx(-100.0)
    checks = first["gate"]["candidates"][0]["checks"]
    assert [check["metric"] for check in checks] == ["tool_name_accuracy", "exact_call_accuracy"]
    assert not any(check["passed"] for check in checks)
    task_tokens = report["parts"]["task"]["tokens"]
    assert [entry["label"] for entry in task_tokens] == ["A", "B"]
    assert all(entry["mean"] > 0 for entry in task_tokens)


def test_compare_cli_reports(workspace, two_results, tmp_path):
    good, bad = two_results
    markdown = tmp_path / "report.md"
    page = tmp_path / "report.html"
    outcome = _invoke(workspace, "eval", "compare", "oracle", "wrong-tool",
                      "--markdown", str(markdown), "--html", str(page))

    assert outcome.exit_code == 0, outcome.output
    assert "Overall cut-over gate over first_decision, task: FAILS" in outcome.output
    text = markdown.read_text(encoding="utf-8")
    assert "# Eval comparison: First decision" in text
    assert "# Eval comparison: Multi-step task" in text
    assert "Cut-over gate: B FAILS against A." in text
    assert "## Tokens per task" in text
    html_text = page.read_text(encoding="utf-8")
    assert html_text.count("<html>") == 1
    assert html_text.count("<section>") == 2


def test_compare_same_result_passes_gate(workspace, two_results):
    good, _ = two_results
    outcome = _invoke(workspace, "eval", "compare", good["id"], good["id"], "--json")

    assert json.loads(outcome.stdout)["gate_passed"] is True


def test_compare_needs_two_results(workspace, two_results):
    good, _ = two_results
    outcome = CliRunner().invoke(cli, ["--home", str(workspace.root), "eval", "compare",
                                       good["id"]])

    assert outcome.exit_code != 0
    assert "give two or three eval results" in outcome.output


def test_compare_rejects_other_evalset(workspace, two_results, tmp_path):
    good, _ = two_results
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(case) + "\n" for case in SUBSET[:3]), encoding="utf-8")
    third = evaluate(workspace, evalset=other, runtime=OracleRuntime(SUBSET), mode="both",
                     max_steps=4)
    outcome = CliRunner().invoke(cli, ["--home", str(workspace.root), "eval", "compare",
                                       good["id"], third["id"]])

    assert isinstance(outcome.exception, ComparisonError)
    assert "different eval sets" in str(outcome.exception)


def test_list_and_show_cli(workspace, two_results):
    good, bad = two_results
    listing = _invoke(workspace, "eval", "list")
    shown = _invoke(workspace, "eval", "show", "wrong-tool", "--cases")
    as_json = json.loads(_invoke(workspace, "--json", "eval", "list").stdout)

    assert good["id"] in listing.output and bad["id"] in listing.output
    assert "tool_name_accuracy" in shown.output
    assert "wrong_tool" in shown.output
    assert {row["label"] for row in as_json} == {"oracle", "wrong-tool"}


def test_limit_spreads_over_categories():
    from types import SimpleNamespace

    from appliance.evaluation.runner import stratified_cases

    cases = [SimpleNamespace(id=f"{c}-{i}", category=c) for c in "abc" for i in range(3)]
    picked = stratified_cases(cases, 4)
    assert [case.id for case in picked] == ["a-0", "a-1", "b-0", "c-0"]
    assert len(stratified_cases(cases, 20)) == 9
