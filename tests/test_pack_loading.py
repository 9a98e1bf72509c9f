"""Pack validation: a broken copy of the entitlements pack gives one PackError naming the
file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from appliance.errors import PackError, ReckonError
from appliance.packs import PACKS_ROOT, load_pack


@pytest.fixture
def pack_copy(tmp_path) -> Path:
    folder = tmp_path / "entitlements"
    shutil.copytree(PACKS_ROOT / "entitlements", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def edit_manifest(folder: Path, change) -> None:
    path = folder / "pack.yaml"
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(manifest)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")


def load_error(folder: Path) -> PackError:
    with pytest.raises(PackError) as raised:
        load_pack(folder)
    assert isinstance(raised.value, ReckonError)
    return raised.value


def test_unchanged_copy_loads(pack_copy):
    pack = load_pack(pack_copy)
    assert pack.path == pack_copy.resolve()
    assert len(pack.tools) == 5


def test_invalid_json_schema(pack_copy):
    def change(manifest):
        manifest["tools"][0]["parameters"]["properties"]["award"]["type"] = "strng"
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.path.endswith("pack.yaml")
    assert error.field == "tools[0].parameters"
    assert "invalid JSON Schema at properties.award.type" in error.problem


def test_parameters_must_be_object_schema(pack_copy):
    def change(manifest):
        manifest["tools"][1]["parameters"]["type"] = "array"
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.field == "tools[1].parameters.type"


def test_duplicate_tool_name(pack_copy):
    def change(manifest):
        manifest["tools"][2]["name"] = "lookup_rate"
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.path.endswith("pack.yaml")
    assert error.field == "tools[2].name"
    assert "duplicate tool name 'lookup_rate'" in error.problem


def test_rule_without_checker(pack_copy):
    def change(manifest):
        del manifest["rules"][3]["checker"]
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.field == "rules[3].checker"
    assert "rule 'say-when-silent' has no checker" in error.problem


def test_rule_checker_not_in_module(pack_copy):
    def change(manifest):
        manifest["rules"][0]["checker"] = "check_nothing"
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.field == "rules[0].checker"
    assert "impl.py has no function 'check_nothing'" in error.problem


def test_tool_without_implementation(pack_copy):
    def change(manifest):
        del manifest["tools"][4]["implementation"]
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.field == "tools[4].implementation"
    assert "tool 'escalate_to_officer' has no implementation" in error.problem


def test_missing_prompt_file(pack_copy):
    (pack_copy / "prompts" / "compact.md").unlink()
    error = load_error(pack_copy)
    assert error.path.endswith("pack.yaml")
    assert error.field == "prompts.compact"
    assert "'prompts/compact.md' not found" in error.problem


def test_extra_prompt_loads_and_must_exist(pack_copy):
    from appliance.packs import load_pack

    assert "teacher" in load_pack(pack_copy).prompts
    (pack_copy / "prompts" / "teacher.md").unlink()
    error = load_error(pack_copy)
    assert error.field == "prompts.teacher"
    assert "'prompts/teacher.md' not found" in error.problem


def test_step_hint_not_in_module(pack_copy):
    def change(manifest):
        manifest["step_hint"] = "write_nothing"
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.field == "step_hint"
    assert "impl.py has no function 'write_nothing'" in error.problem


def test_unknown_terminal_tool(pack_copy):
    def change(manifest):
        manifest["terminal_tools"].append("hang_up")
    edit_manifest(pack_copy, change)
    error = load_error(pack_copy)
    assert error.field == "terminal_tools[3]"


def test_missing_evalset_file(pack_copy):
    (pack_copy / "eval" / "heldout.jsonl").unlink()
    error = load_error(pack_copy)
    assert error.field == "evalset"


def test_module_that_fails_to_import(pack_copy):
    impl = pack_copy / "impl.py"
    impl.write_text(impl.read_text(encoding="utf-8") + "\nraise RuntimeError('broken on purpose')\n",
                    encoding="utf-8")
    error = load_error(pack_copy)
    assert error.path.endswith("impl.py")
    assert error.field == "(module)"
    assert "broken on purpose" in error.problem
