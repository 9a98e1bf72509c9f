"""Import the public BFCL data (simple_python, multiple, irrelevance) as eval sets.

The Berkeley Function-Calling Leaderboard ships each category as JSON Lines in a ".json"
file: BFCL_v4_<category>.json holds {"id", "question", "function"} per line, and
possible_answer/BFCL_v4_<category>.json holds {"id", "ground_truth"} (irrelevance has no
possible answers, because a correct model calls nothing). The data is Apache-2.0
licensed; the imported set's manifest records the license file and SOURCE_COMMIT.

The project keeps a copy next to the repository, at ../shared/reference/bfcl relative to
the repository root (`default_bfcl_dir`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

from appliance.errors import NotFoundError, ReckonError
from appliance.evaluation.evalset import EvalSet, canonical_line, freeze, parse_evalset

log = logging.getLogger(__name__)

CATEGORIES = ("simple_python", "multiple", "irrelevance")

# BFCL type names to JSON Schema, for presenting BFCL functions to OpenAI-style APIs.
JSON_SCHEMA_TYPES = {
    "string": "string", "integer": "integer", "float": "number", "number": "number",
    "boolean": "boolean", "array": "array", "tuple": "array", "dict": "object",
    "object": "object", "any": "string", "null": "null",
}


class BfclDataError(ReckonError):
    """The BFCL data folder is missing a file or contains an invalid line."""


def default_bfcl_dir(repo_root: str | Path | None = None) -> Path:
    """Return <repo root>/../shared/reference/bfcl (it may not exist)."""
    if repo_root is None:
        from appliance.workspace import SOURCE_ROOT

        repo_root = SOURCE_ROOT
    return Path(repo_root).resolve().parent / "shared" / "reference" / "bfcl"


def category_file(directory: str | Path, category: str, possible_answer: bool = False) -> Path:
    """Return the newest BFCL_v<N>_<category>.json in the folder (or its possible_answer/)."""
    if category not in CATEGORIES:
        raise ReckonError(f"unsupported BFCL category {category!r}; use one of "
                          f"{', '.join(CATEGORIES)}")
    folder = Path(directory) / ("possible_answer" if possible_answer else "")
    pattern = re.compile(rf"^BFCL_v(\d+)_{re.escape(category)}\.json$")
    found = sorted(((int(match.group(1)), path) for path in folder.glob("BFCL_v*.json")
                    if (match := pattern.match(path.name))), reverse=True)
    if not found:
        raise NotFoundError(f"no BFCL_v*_{category}.json in {folder}; point at the BFCL data "
                            "folder (the one holding possible_answer/)")
    return found[0][1]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BfclDataError(f"{path}: line {number}: invalid JSON: {error.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise BfclDataError(f"{path}: line {number}: expected an object with a string id")
        rows.append(row)
    return rows


def load_bfcl_category(directory: str | Path, category: str, limit: int | None = None) -> list[dict]:
    """Read one BFCL category and return eval-set lines (dicts) in BFCL's order."""
    questions = _read_jsonl(category_file(directory, category))
    answers: dict[str, Any] = {}
    if category != "irrelevance":
        answer_path = category_file(directory, category, possible_answer=True)
        for row in _read_jsonl(answer_path):
            answers[row["id"]] = row.get("ground_truth")

    cases = []
    for row in questions[:limit] if limit is not None else questions:
        case = {"id": row["id"], "question": row["question"], "function": row["function"],
                "category": category}
        if category == "irrelevance":
            case["expected_outcome"] = "refuse"
        else:
            if row["id"] not in answers:
                raise BfclDataError(f"{category_file(directory, category, True)}: no possible "
                                    f"answer for {row['id']!r}")
            case["ground_truth"] = answers[row["id"]]
            case["expected_outcome"] = "answer"
        cases.append(case)
    return cases


def bfcl_metadata(directory: str | Path, category: str) -> dict:
    """Return the provenance recorded with an imported set: files, license, commit."""
    folder = Path(directory)
    commit_file = folder / "SOURCE_COMMIT"
    return {
        "source": "bfcl", "category": category,
        "file": category_file(folder, category).name,
        "license": "Apache-2.0" if (folder / "LICENSE").is_file() else None,
        "source_commit": commit_file.read_text(encoding="utf-8").strip()
        if commit_file.is_file() else None,
    }


def bfcl_evalset(directory: str | Path, category: str, limit: int | None = None) -> EvalSet:
    """Read and validate one BFCL category as an (unfrozen) eval set."""
    cases = load_bfcl_category(directory, category, limit)
    text = "".join(canonical_line(case) + "\n" for case in cases)
    return parse_evalset(text, str(category_file(directory, category)))


def import_bfcl(directory: str | Path, category: str, workspace, name: str | None = None,
                limit: int | None = None, output: str | Path | None = None) -> EvalSet:
    """Convert a BFCL category into an eval set, optionally write it, and freeze it."""
    evalset = bfcl_evalset(directory, category, limit)
    if output is not None:
        Path(output).write_text(evalset.canonical_text(), encoding="utf-8")
    default_name = f"bfcl-{category.replace('_', '-')}" + (f"-{limit}" if limit else "")
    frozen = freeze(evalset, workspace, name or default_name, bfcl_metadata(directory, category))
    log.info("imported BFCL %s: %d cases as %s", category, len(frozen.cases), frozen.digest)
    return frozen


# -- presenting BFCL functions to a model --------------------------------------------------


def openai_function_name(name: str, underscore_names: bool) -> str:
    return name.replace(".", "_") if underscore_names else name


def _json_schema(schema: Mapping) -> dict:
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            names = value if isinstance(value, list) else [value]
            mapped = [JSON_SCHEMA_TYPES.get(item, item) for item in names]
            converted["type"] = mapped if isinstance(value, list) else mapped[0]
        elif key == "properties" and isinstance(value, Mapping):
            converted["properties"] = {name: _json_schema(item) if isinstance(item, Mapping) else item
                                       for name, item in value.items()}
        elif key == "items" and isinstance(value, Mapping):
            converted["items"] = _json_schema(value)
        elif key == "optional":
            # BFCL's own marker; JSON Schema expresses it through "required".
            continue
        else:
            converted[key] = value
    return converted


def openai_tools(functions: list[Mapping], underscore_names: bool = False) -> list[dict]:
    """Convert BFCL function docs to OpenAI tools with JSON Schema parameters.

    With underscore_names, dots in names become underscores (OpenAI function names must
    match ^[a-zA-Z0-9_-]{1,64}$); check the output with CheckOptions(underscore_names=True).
    """
    tools = []
    for function in functions:
        parameters = _json_schema(function.get("parameters") or {"type": "dict", "properties": {}})
        tools.append({"type": "function", "function": {
            "name": openai_function_name(function["name"], underscore_names),
            "description": function.get("description", ""),
            "parameters": parameters,
        }})
    return tools
