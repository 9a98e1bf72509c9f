"""Training data: tokenised datasets, on-the-fly tokenisation and length-grouped batches.

A curated dataset lives in <workspace>/artifacts/datasets/<id>/ with manifest.json,
train.jsonl / validation.jsonl ({"messages", "tools", "meta"}) and tokenized/train.jsonl,
tokenized/validation.jsonl ({"input_ids": [...], "labels": [...]}, labels -100 where no loss
is taken). The tokenised files fit the tokenizer of the base named in the manifest; for any
other base the conversations are rendered and tokenised again with that base's tokenizer.

Batches are planned in micro-batches of `batch_size` sequences. The plan of an epoch depends
only on the sequence lengths, the seed and the epoch number, so every rank of a distributed
run computes the same plan, and a resumed run continues from a step number alone.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from appliance.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised_targets(self) -> int:
        """Positions t whose next-token label labels[t + 1] is trained on."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class TrainingData:
    dataset_id: str
    digest: str
    renderer: str | None
    train: list[Example]
    validation: list[Example]
    manifest: dict[str, Any] = field(default_factory=dict)
    retokenized: bool = False


# -- reading ---------------------------------------------------------------------------------

def read_tokenized(path: Path, max_length: int | None = None) -> list[Example]:
    """Read a tokenized JSONL file, checking every record; errors name the file and line."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{where}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{where}: expected an object with input_ids and labels")
            input_ids = record.get("input_ids")
            labels = record.get("labels")
            for name, value in (("input_ids", input_ids), ("labels", labels)):
                if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
                    raise ConfigError(f"{where}: field {name!r} must be a list of integers")
            if not input_ids:
                raise ConfigError(f"{where}: field 'input_ids' is empty")
            if len(labels) != len(input_ids):
                raise ConfigError(f"{where}: 'labels' has {len(labels)} entries but 'input_ids' has "
                                  f"{len(input_ids)}; they must align token by token")
            if any(v < 0 for v in input_ids):
                raise ConfigError(f"{where}: field 'input_ids' has a negative token id")
            if any(v < 0 and v != IGNORE_INDEX for v in labels):
                raise ConfigError(f"{where}: field 'labels' has a negative value other than -100")
            if max_length is not None and len(input_ids) > max_length:
                input_ids = input_ids[:max_length]
                labels = labels[:max_length]
            examples.append(Example(input_ids, labels))
    return examples


def check_vocabulary(examples: Iterable[Example], vocab_size: int, source: str) -> None:
    for index, example in enumerate(examples):
        top = max(example.input_ids)
        if top >= vocab_size:
            raise ConfigError(f"{source}: record {index + 1} has token id {top}, outside the base's "
                              f"vocabulary of {vocab_size}; the dataset was tokenised for another base")


def dataset_dir(workspace, dataset_id: str) -> Path:
    folder = workspace.artifacts / "datasets" / dataset_id
    if not (folder / "manifest.json").is_file():
        raise NotFoundError(f"dataset {dataset_id!r} not found: {folder / 'manifest.json'} is missing; "
                            "`reckon curate` builds datasets")
    return folder


def manifest_base_digest(manifest: dict) -> str | None:
    """Return the weights digest of the base whose tokenizer produced tokenized/, if recorded."""
    # The curation pipeline records the tokenizer's base under "tokenizer"; "base" and
    # "base_digest" are accepted for hand-made datasets.
    for key in ("tokenizer", "base"):
        identity = manifest.get(key)
        if isinstance(identity, dict) and (identity.get("weights_digest") or identity.get("digest")):
            return identity.get("weights_digest") or identity.get("digest")
    return manifest.get("base_digest")


def load_training_data(workspace, dataset_id: str, base_digest: str, max_length: int,
                       tokenizer_loader=None) -> TrainingData:
    """Load a dataset's train/validation examples for a base, re-tokenising if needed.

    `tokenizer_loader` returns the training base's tokenizer; it is called only when the
    tokenised files were made for another base.
    """
    folder = dataset_dir(workspace, dataset_id)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{manifest_path}: not a readable JSON manifest ({error})") from None
    digest = manifest.get("digest")
    if not isinstance(digest, str) or not digest:
        raise ConfigError(f"{manifest_path}: field 'digest' is missing")
    renderer = manifest.get("renderer")
    if isinstance(renderer, dict):
        renderer = renderer.get("name")

    tokenized_for = manifest_base_digest(manifest)
    tokenized = folder / "tokenized"
    use_tokenized = (tokenized / "train.jsonl").is_file() and (
        tokenized_for is None or tokenized_for == base_digest)
    if use_tokenized:
        if tokenized_for is None:
            log.warning("dataset %s: manifest names no base, assuming tokenized/ fits base %s",
                        dataset_id, base_digest)
        train = read_tokenized(tokenized / "train.jsonl", max_length)
        validation_path = tokenized / "validation.jsonl"
        validation = read_tokenized(validation_path, max_length) if validation_path.is_file() else []
        retokenized = False
    else:
        if tokenizer_loader is None:
            raise ConfigError(f"dataset {dataset_id!r} was tokenised for base {tokenized_for}; "
                              f"re-tokenising for base {base_digest} needs its tokenizer")
        log.info("dataset %s: tokenising conversations for base %s", dataset_id, base_digest)
        tokenizer = tokenizer_loader()
        train, renderer = retokenize(folder / "train.jsonl", tokenizer, manifest, max_length)
        validation_path = folder / "validation.jsonl"
        validation = (retokenize(validation_path, tokenizer, manifest, max_length)[0]
                      if validation_path.is_file() else [])
        retokenized = True

    train = [e for e in train if e.supervised_targets > 0]
    validation = [e for e in validation if e.supervised_targets > 0]
    if not train:
        raise ConfigError(f"dataset {dataset_id!r} has no training example with supervised tokens "
                          f"(within max_length {max_length})")
    return TrainingData(dataset_id, digest, renderer, train, validation, manifest, retokenized)


# -- tokenising conversations ----------------------------------------------------------------

def tokenize_conversation(tokenizer, renderer, messages: list[dict], tools: list[dict],
                          max_length: int | None = None) -> Example:
    """Render a conversation and label the tokens inside the renderer's supervised spans.

    A token is supervised when its characters lie inside a span (the assistant action and its
    end-of-turn marker); every other label is -100.
    """
    rendered = renderer.render(messages, tools)
    encoded = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    spans = rendered.supervised_spans
    for index, (start, end) in enumerate(encoded["offset_mapping"]):
        if end <= start:
            continue        # special tokens such as <bos> carry an empty offset
        if any(span_start <= start and end <= span_end for span_start, span_end in spans):
            labels[index] = input_ids[index]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return Example(input_ids, labels)


def retokenize(path: Path, tokenizer, manifest: dict, max_length: int) -> tuple[list[Example], str]:
    """Tokenise a split's conversations for another base; return (examples, renderer name).

    Uses the curation pipeline's renderer choice and masking (the base's tool-aware chat
    template, else the specialist format; only each example's last assistant turn supervised),
    so a re-tokenised split is what curating for that base would have produced.
    """
    try:
        from appliance.curation.render import choose_renderer, tokenize_examples
    except ImportError:
        # NOTE: without the curation package, every assistant turn is supervised in the
        # specialist format, which differs from curated files that supervise the last one.
        from appliance.formats import get_renderer

        renderer = get_renderer(manifest.get("renderer") or "reckon-specialist-v1")
        return tokenize_jsonl(path, tokenizer, renderer, max_length), renderer.name

    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise ConfigError(f"{path}:{line_number}: field 'messages' must be a list")
            records.append(record)
    tool_style = manifest.get("tool_style") or (manifest.get("renderer_identity") or {}).get("tool_style")
    renderer = choose_renderer(tokenizer, tool_style) if tool_style else choose_renderer(tokenizer)
    rows, report = tokenize_examples(records, tokenizer, renderer, max_length)
    if report.get("could_not_fit") or report.get("render_errors"):
        log.warning("%s: %s examples did not fit max_length %s and %s did not render",
                    path, report.get("could_not_fit"), max_length, report.get("render_errors"))
    return [Example(row["input_ids"], row["labels"]) for row in rows], renderer.name


def tokenize_jsonl(path: Path, tokenizer, renderer, max_length: int | None = None) -> list[Example]:
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list):
                raise ConfigError(f"{path}:{line_number}: field 'messages' must be a list")
            try:
                examples.append(tokenize_conversation(tokenizer, renderer, messages,
                                                      record.get("tools") or [], max_length))
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigError(f"{path}:{line_number}: cannot render the conversation ({error})") from None
    return examples


# -- batching ----------------------------------------------------------------------------------

def plan_epoch(lengths: list[int], batch_size: int, seed: int, epoch: int,
               group_factor: int = 8) -> list[list[int]]:
    """Return the epoch's micro-batches (lists of example indices), grouped by length.

    Indices are shuffled, cut into groups of batch_size * group_factor, sorted by length inside
    each group and chunked, so a micro-batch contains sequences of similar length and pads
    little. The micro-batches are then shuffled so that lengths do not drift over the epoch.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start:start + group], key=lambda i: (-lengths[i], i))
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def plan_validation(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(examples: list[Example], indices: list[int], pad_id: int):
    """Right-pad a micro-batch into (input_ids, labels) LongTensors."""
    import torch

    chosen = [examples[i] for i in indices]
    width = max(len(e.input_ids) for e in chosen)
    input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
    labels = torch.full((len(chosen), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(chosen):
        input_ids[row, :len(example.input_ids)] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
    return input_ids, labels
