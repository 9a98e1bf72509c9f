"""Eval set format: validation of bad lines, digest, freezing, tampering detection, CLI."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.errors import NotFoundError, ReckonError
from appliance.evaluation.evalset import (EvalCase, EvalSetError, EvalSetTamperedError,
                                          evalsets_root, freeze_evalset, list_frozen,
                                          load_evalset, load_frozen, parse_evalset)

QUESTION = [[{"role": "user", "content": "What is the rate for Clerk L2?"}]]
FUNCTION = [{"name": "lookup_rate", "description": "Look up a rate.",
             "parameters": {"type": "dict", "properties": {"award": {"type": "string"}},
                            "required": ["award"]}}]


def good_case(case_id: str = "c1", **extra) -> dict:
    case = {"id": case_id, "question": QUESTION, "function": FUNCTION,
            "ground_truth": [{"lookup_rate": {"award": ["Clerk L2"]}}],
            "category": "rate_lookup", "rules": ["lookup-before-stating"]}
    case.update(extra)
    return case


def write_set(path, cases) -> str:
    path.write_text("".join(json.dumps(case) + "\n" for case in cases), encoding="utf-8")
    return str(path)


# -- validation ----------------------------------------------------------------------------


def test_load_valid_set(tmp_path):
    path = write_set(tmp_path / "set.jsonl", [
        good_case("c1"),
        {"id": "c2", "question": QUESTION, "category": "refusal", "expected_outcome": "refuse"},
        {"id": "c3", "question": QUESTION, "category": "multi_step",
         "expected_calls": [{"lookup_rate": {"award": ["Clerk L2"]}},
                            {"final_answer": {"answer": ["$any"]}}],
         "task": {"id": "t3", "request": "rate?", "expected": {"rate": 42.1}}},
    ])
    evalset = load_evalset(path)
    assert [case.id for case in evalset.cases] == ["c1", "c2", "c3"]
    assert evalset.cases[0].expected_outcome == "answer"
    assert evalset.cases[1].expected_outcome == "refuse"
    assert evalset.cases[2].multi_step
    assert evalset.cases[2].function is None
    assert all(case.evalset_digest == evalset.digest for case in evalset.cases)
    assert evalset.categories() == {"multi_step": 1, "rate_lookup": 1, "refusal": 1}


BAD_LINES = [
    ("not json {", "(line)", "invalid JSON"),
    ('["a list"]', "(line)", "must be a JSON object"),
    ('{"id": "x", "question": [[{"role": "user", "content": "q"}]], "expected_outcome": NaN}',
     "(line)", "NaN"),
    (json.dumps(good_case(id="")), "id", "non-empty string"),
    (json.dumps(good_case(question=[])), "question", "non-empty list"),
    (json.dumps(good_case(question=[[{"role": "robot", "content": "q"}]])), "question[0][0].role",
     "'robot'"),
    (json.dumps(good_case(question=[[{"role": "user", "content": 3}]])), "question[0][0].content",
     "string"),
    (json.dumps(good_case(function=[{"name": "f"}])), "function[0].parameters", "missing"),
    (json.dumps(good_case(function=[{"name": "lookup_rate", "parameters": {
        "properties": {"award": {"type": "str"}}}}])),
     "function[0].parameters.properties.award.type", "'str'"),
    (json.dumps(good_case(function=[{"name": "lookup_rate", "parameters": {
        "properties": {}, "required": ["award"]}}], ground_truth=[{"lookup_rate": {}}])),
     "function[0].parameters.required", "not among the properties"),
    (json.dumps(good_case(ground_truth=[{"other_tool": {"x": [1]}}])), "ground_truth[0]",
     "not in the 'function' list"),
    (json.dumps(good_case(ground_truth=[{"lookup_rate": {"award": "Clerk L2"}}])),
     "ground_truth[0].lookup_rate.award", "list of possible values"),
    (json.dumps(good_case(ground_truth=[{"lookup_rate": {"year": [2026]}}])),
     "ground_truth[0].lookup_rate.year", "not a parameter"),
    (json.dumps(good_case(ground_truth=[{"a": {}, "b": {}}])), "ground_truth[0]", "exactly one key"),
    (json.dumps(good_case(expected_outcome="maybe")), "expected_outcome", "'maybe'"),
    (json.dumps(good_case(rules="lookup")), "rules", "list of rule id"),
    (json.dumps(good_case(task={"id": "t"})), "task.request", "missing"),
    (json.dumps(good_case(expected_calls=[{"lookup_rate": {"award": ["x"]}}])), "expected_calls",
     "not both"),
    (json.dumps(good_case(extra_field=1)), "extra_field", "unknown field"),
    (json.dumps({"id": "x", "question": QUESTION}), "ground_truth", "nothing to check"),
    (json.dumps({"id": "x", "question": QUESTION, "expected_outcome": "answer"}), "expected_outcome",
     "needs ground_truth"),
    (json.dumps(good_case(category="")), "category", "non-empty string"),
    (json.dumps(good_case(expected_outcome="silent")), "expected_outcome", "expects no calls"),
]


@pytest.mark.parametrize("line, field, problem", BAD_LINES)
def test_bad_line_reported(tmp_path, line, field, problem):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(good_case("ok")) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(EvalSetError) as caught:
        load_evalset(path)
    problems = caught.value.problems
    assert any(number == 3 and name == field and problem in text
               for number, name, text in problems), problems
    assert f"{path}: line 3: {field}" in str(caught.value)


def test_all_bad_lines_reported_together(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(["{", json.dumps(good_case("a")), "[]", json.dumps(good_case("a"))]),
                    encoding="utf-8")
    with pytest.raises(EvalSetError) as caught:
        load_evalset(path)
    lines = sorted({number for number, _, _ in caught.value.problems})
    assert lines == [1, 3, 4]
    assert any("duplicate id 'a' (first on line 2)" in text for _, _, text in caught.value.problems)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(EvalSetError, match="contains no cases"):
        load_evalset(path)


def test_missing_file(tmp_path):
    with pytest.raises(NotFoundError):
        load_evalset(tmp_path / "absent.jsonl")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "\xe9"}\n')
    with pytest.raises(EvalSetError, match="not UTF-8"):
        load_evalset(path)


def test_case_from_dict_raises_with_field():
    with pytest.raises(EvalSetError, match="expected_outcome"):
        EvalCase.from_dict(good_case(expected_outcome="never"))


def test_error_message_truncated(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{\n" * 80, encoding="utf-8")
    with pytest.raises(EvalSetError) as caught:
        load_evalset(path)
    assert len(caught.value.problems) == 80
    assert "and 30 more problems" in str(caught.value)


# -- digest --------------------------------------------------------------------------------


def test_digest_ignores_formatting_and_key_order(tmp_path):
    case = good_case()
    first = tmp_path / "a.jsonl"
    first.write_text(json.dumps(case, indent=None) + "\n", encoding="utf-8")
    second = tmp_path / "b.jsonl"
    reordered = dict(reversed(list(case.items())))
    second.write_text("\n" + json.dumps(reordered, separators=(" ,", " : ")) + "\n\n",
                      encoding="utf-8")
    assert load_evalset(first).digest == load_evalset(second).digest


def test_digest_changes_with_content_and_order(tmp_path):
    one = load_evalset(write_set(tmp_path / "1.jsonl", [good_case("a"), good_case("b")])).digest
    two = load_evalset(write_set(tmp_path / "2.jsonl", [good_case("b"), good_case("a")])).digest
    three = load_evalset(write_set(tmp_path / "3.jsonl", [good_case("a"), good_case("c")])).digest
    assert len({one, two, three}) == 3


def test_digest_is_sha256_of_canonical_lines():
    import hashlib

    text = json.dumps(good_case()) + "\n"
    evalset = parse_evalset(text)
    canonical = json.dumps(good_case(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False) + "\n"
    assert evalset.digest == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# -- freezing ------------------------------------------------------------------------------


def test_freeze_writes_read_only_copy(tmp_path, workspace):
    path = write_set(tmp_path / "heldout.jsonl", [good_case("a"), good_case("b")])
    frozen = freeze_evalset(path, workspace)
    folder = evalsets_root(workspace) / frozen.digest.split(":")[1]
    assert frozen.name == "heldout"
    assert frozen.frozen
    for name in ("cases.jsonl", "manifest.json"):
        mode = (folder / name).stat().st_mode
        assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["digest"] == frozen.digest
    assert manifest["n_cases"] == 2


def test_freeze_same_content_is_idempotent(tmp_path, workspace):
    path = write_set(tmp_path / "heldout.jsonl", [good_case("a")])
    first = freeze_evalset(path, workspace)
    again = freeze_evalset(path, workspace)
    assert again.digest == first.digest
    other_name = freeze_evalset(path, workspace, name="alias")
    assert other_name.digest == first.digest
    rows = list_frozen(workspace)
    assert len(rows) == 1
    assert rows[0]["names"] == ["alias", "heldout"]


def test_freeze_refuses_different_content_same_name(tmp_path, workspace):
    freeze_evalset(write_set(tmp_path / "heldout.jsonl", [good_case("a")]), workspace)
    changed = write_set(tmp_path / "changed.jsonl", [good_case("a"), good_case("b")])
    with pytest.raises(ReckonError, match="already frozen with digest"):
        freeze_evalset(changed, workspace, name="heldout")


def test_freeze_rejects_bad_name(tmp_path, workspace):
    path = write_set(tmp_path / "set.jsonl", [good_case("a")])
    with pytest.raises(ReckonError, match="invalid eval set name"):
        freeze_evalset(path, workspace, name="../escape")


def test_load_frozen_by_name_digest_and_prefix(tmp_path, workspace):
    frozen = freeze_evalset(write_set(tmp_path / "heldout.jsonl", [good_case("a")]), workspace)
    hex_digest = frozen.digest.split(":")[1]
    for ref in ("heldout", frozen.digest, hex_digest, hex_digest[:8]):
        assert load_frozen(workspace, ref).digest == frozen.digest
    with pytest.raises(NotFoundError):
        load_frozen(workspace, "nothing-here")


def test_tampered_cases_detected(tmp_path, workspace):
    frozen = freeze_evalset(write_set(tmp_path / "heldout.jsonl", [good_case("a")]), workspace)
    cases_file = frozen.path
    os.chmod(cases_file, 0o644)
    text = cases_file.read_text().replace("Clerk L2", "Clerk L3")
    cases_file.write_text(text)
    with pytest.raises(EvalSetTamperedError, match="modified after freezing"):
        load_frozen(workspace, "heldout")
    # Re-freezing the original content must not silently accept the tampered copy.
    with pytest.raises(EvalSetTamperedError):
        freeze_evalset(tmp_path / "heldout.jsonl", workspace)


def test_whitespace_edit_detected(tmp_path, workspace):
    frozen = freeze_evalset(write_set(tmp_path / "heldout.jsonl", [good_case("a")]), workspace)
    os.chmod(frozen.path, 0o644)
    frozen.path.write_text(frozen.path.read_text() + "\n")
    with pytest.raises(EvalSetTamperedError):
        load_frozen(workspace, frozen.digest)


def test_tampered_manifest_detected(tmp_path, workspace):
    frozen = freeze_evalset(write_set(tmp_path / "heldout.jsonl", [good_case("a")]), workspace)
    manifest = frozen.path.parent / "manifest.json"
    os.chmod(manifest, 0o644)
    data = json.loads(manifest.read_text())
    data["digest"] = "sha256:" + "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(EvalSetTamperedError, match="manifest.json names digest"):
        load_frozen(workspace, "heldout")


def test_deleted_cases_detected(tmp_path, workspace):
    frozen = freeze_evalset(write_set(tmp_path / "heldout.jsonl", [good_case("a")]), workspace)
    os.chmod(frozen.path, 0o644)
    frozen.path.unlink()
    with pytest.raises(EvalSetTamperedError, match="incomplete"):
        load_frozen(workspace, "heldout")


# -- CLI -----------------------------------------------------------------------------------


def invoke(workspace, *args):
    runner = CliRunner()
    return runner.invoke(cli, ["--home", str(workspace.root), *args], catch_exceptions=False)


def test_cli_freeze_list_show(tmp_path, workspace):
    path = write_set(tmp_path / "heldout.jsonl", [good_case("a"), good_case("b")])
    result = invoke(workspace, "evalset", "freeze", path, "--name", "pilot")
    assert result.exit_code == 0, result.output
    assert "Frozen pilot as sha256:" in result.output

    listed = invoke(workspace, "--json", "evalset", "list")
    rows = json.loads(listed.output)
    assert rows[0]["names"] == ["pilot"]
    assert rows[0]["n_cases"] == 2

    shown = invoke(workspace, "--json", "evalset", "show", "pilot", "--cases")
    data = json.loads(shown.output)
    assert [case["id"] for case in data["cases"]] == ["a", "b"]

    table = invoke(workspace, "evalset", "show", "pilot", "--cases")
    assert "Digest verified." in table.output
    assert "rate_lookup" in table.output


def test_cli_freeze_bad_file_reports_line(tmp_path, workspace):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good_case("a")) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(EvalSetError, match="line 2"):
        invoke(workspace, "evalset", "freeze", str(path))


def test_cli_list_empty(workspace):
    result = invoke(workspace, "evalset", "list")
    assert "No frozen eval sets" in result.output


def test_cli_import_bfcl(tmp_path, workspace):
    from tests.test_bfcl import BFCL_DIR

    if not (BFCL_DIR / "possible_answer").is_dir():
        pytest.skip(f"BFCL reference data not found at {BFCL_DIR}")
    result = invoke(workspace, "--json", "evalset", "import-bfcl", str(BFCL_DIR),
                    "--category", "irrelevance", "--limit", "10")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["name"] == "bfcl-irrelevance-10"
    assert data["n_cases"] == 10
    assert load_frozen(workspace, "bfcl-irrelevance-10").digest == data["digest"]
