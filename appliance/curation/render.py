"""Rendering, tokenisation and loss masking of examples for the target base model.

The renderer follows the base. A tokenizer whose chat template mentions tools renders
through `apply_chat_template(messages, tools=tools)`. Any other base, such as the embedded
Gemma 3 270M base, which has no template, uses the appliance's specialist format. Training, eval and
serving must render through the same renderer, so the dataset manifest records its name.

Labels cover only the target action and its end-of-turn marker. Each token's character
offsets (return_offsets_mapping) are matched against the supervised character span: a token
is supervised when it starts inside the span. A token that starts before the span and ends
inside it is counted as a boundary straddle and reported. Every example is checked: at least one
supervised token, the end-of-turn token supervised, and no supervised token reaching
outside the span. Padding is left to the trainer's collator, so a tokenizer whose pad
token equals EOS or the end-of-turn token cannot mask the end label here.

An example longer than max_length loses whole history turns, oldest assistant/tool group
first. The system turn, the user request, the group right before the target (the results
the target reacts to) and the target itself are never cut. What still does not fit is
counted and left out.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from appliance.chat import parse_arguments
from appliance.errors import ReckonError
from appliance.formats import Rendered, SpecialistRenderer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_TOOL_STYLE = "compact"
PROMPT_KINDS = ("compact", "full", "trace")


class RenderError(ReckonError):
    """An example that the renderer or the tokenizer cannot turn into a training row."""


class MaskingError(RenderError):
    """Labels that break a masking invariant; this is a renderer or tokenizer mismatch."""


# -- message preparation -----------------------------------------------------------------------


def _sorted_value(value: Any) -> Any:
    """Rebuild dicts with sorted keys, so every renderer sees one key order."""
    if isinstance(value, dict):
        return {key: _sorted_value(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_value(item) for item in value]
    return value


def prepare_messages(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Return copies ready to render and store.

    Tool-call arguments become objects with sorted keys whether they arrived as a JSON
    string or as an object, so both render identically. With `system_prompt` set, the
    trace's system message is replaced (or one is added in front).
    """
    prepared = []
    for message in messages:
        copy = {key: value for key, value in message.items() if value is not None
                or key == "content"}
        if copy.get("tool_calls"):
            calls = []
            for call in copy["tool_calls"]:
                function = call.get("function", call)
                calls.append({"id": call.get("id"), "type": "function",
                              "function": {"name": function.get("name"),
                                           "arguments": _sorted_value(
                                               parse_arguments(function.get("arguments")))}})
            copy["tool_calls"] = calls
        prepared.append(copy)
    if system_prompt is not None:
        if prepared and prepared[0].get("role") == "system":
            prepared[0] = {"role": "system", "content": system_prompt}
        else:
            prepared.insert(0, {"role": "system", "content": system_prompt})
    return prepared


def system_prompt_for(pack, prompt_kind: str) -> str | None:
    """Return the pack prompt that replaces the trace's system message; None keeps it."""
    if prompt_kind not in PROMPT_KINDS:
        raise ReckonError(f"prompt kind {prompt_kind!r} is not one of {', '.join(PROMPT_KINDS)}")
    if prompt_kind == "trace":
        return None
    return pack.prompts[prompt_kind]


# -- renderers ---------------------------------------------------------------------------------


class SpecialistExampleRenderer:
    """The specialist format, supervising only the target (the last assistant message)."""

    def __init__(self, tool_style: str = DEFAULT_TOOL_STYLE):
        self.format = SpecialistRenderer(tool_style=tool_style)
        self.tool_style = tool_style
        self.name = SpecialistRenderer.name
        self.end_of_turn = SpecialistRenderer.end_of_turn

    def render_example(self, messages: list[dict], tools: list[dict]) -> Rendered:
        try:
            rendered = self.format.render(messages, tools)
        except (ValueError, KeyError, TypeError) as error:
            raise RenderError(f"specialist format cannot render the example: {error}") from None
        if not rendered.supervised_spans or messages[-1].get("role") != "assistant":
            raise RenderError("the example does not end with an assistant message")
        return Rendered(rendered.text, [rendered.supervised_spans[-1]])

    def identity(self) -> dict:
        return {"renderer": self.name, "tool_style": self.tool_style}


class ChatTemplateRenderer:
    """The base's own chat template, for tokenizers whose template supports tools."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        template = tokenizer.chat_template
        if not isinstance(template, str):
            raise RenderError("the tokenizer has no single chat template to render with")
        digest = hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]
        self.name = f"chat-template-{digest}"
        self.tool_style = "template"
        self.end_of_turn = self._probe_end_of_turn()

    def _apply(self, messages: list[dict], tools: list[dict], generation: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools or None, tokenize=False, add_generation_prompt=generation)
        except Exception as error:  # noqa: BLE001 - jinja raises many types for bad input
            raise RenderError(f"chat template cannot render the example: "
                              f"{type(error).__name__}: {error}") from None

    def _probe_end_of_turn(self) -> str:
        """Find the text the template writes after an assistant message's content."""
        marker = "RECKON_PROBE_7f3a"
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        text = self._apply(probe, [], generation=False)
        tail = text[text.index(marker) + len(marker):].strip()
        if not tail:
            raise RenderError("the chat template writes nothing after an assistant message, "
                              "so the end of a turn cannot be supervised")
        # The end-of-turn marker is the first special token after the content, else the
        # first line of what follows.
        for token in sorted(self.tokenizer.all_special_tokens, key=len, reverse=True):
            if tail.startswith(token):
                return token
        return tail.splitlines()[0]

    def render_example(self, messages: list[dict], tools: list[dict]) -> Rendered:
        prefix = self._apply(messages[:-1], tools, generation=True)
        full = self._apply(messages, tools, generation=False)
        if not full.startswith(prefix):
            raise RenderError("the chat template renders the history differently once the "
                              "target is added, so the target span cannot be located")
        end = full.find(self.end_of_turn, len(prefix))
        if end < 0:
            raise RenderError(f"end-of-turn marker {self.end_of_turn!r} not found after the target")
        return Rendered(full, [(len(prefix), end + len(self.end_of_turn))])

    def identity(self) -> dict:
        return {"renderer": self.name, "tool_style": self.tool_style,
                "end_of_turn": self.end_of_turn}


def as_example_renderer(renderer):
    """Accept a formats.SpecialistRenderer as well as the example renderers of this module."""
    if isinstance(renderer, SpecialistRenderer):
        return SpecialistExampleRenderer(renderer.tool_style)
    if not hasattr(renderer, "render_example"):
        raise ReckonError(f"{type(renderer).__name__} cannot render training examples; use "
                          "choose_renderer(tokenizer) or a SpecialistRenderer")
    return renderer


def choose_renderer(tokenizer, tool_style: str = DEFAULT_TOOL_STYLE):
    """Pick the base's chat template when it supports tools, else the specialist format."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and "tools" in template:
        return ChatTemplateRenderer(tokenizer)
    return SpecialistExampleRenderer(tool_style)


# -- tokenisation and masking ------------------------------------------------------------------


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    boundary_straddles: int = 0


def _end_token_id(tokenizer, end_of_turn: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return token_id


def tokenize_rendered(rendered: Rendered, tokenizer, end_of_turn: str) -> Tokenized:
    """Tokenise rendered text and label the tokens that start inside a supervised span."""
    text = rendered.text
    bos = tokenizer.bos_token
    # A template that already writes BOS must not get a second one.
    add_special = bool(bos) and not text.startswith(bos)
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special)
    input_ids = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    labels = [IGNORE_INDEX] * len(input_ids)
    straddles = 0
    for position, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        for span_start, span_end in rendered.supervised_spans:
            if span_start <= start < span_end:
                if end > span_end:
                    raise MaskingError(f"token {position} ({start}-{end}) starts in the target "
                                       f"but ends after it at {span_end}")
                labels[position] = input_ids[position]
                break
            if start < span_start < end:
                straddles += 1
    _check_labels(input_ids, labels, offsets, rendered, tokenizer, end_of_turn)
    return Tokenized(input_ids, labels, straddles)


def _check_labels(input_ids, labels, offsets, rendered: Rendered, tokenizer,
                  end_of_turn: str) -> None:
    supervised = [position for position, label in enumerate(labels) if label != IGNORE_INDEX]
    if not supervised:
        raise MaskingError("no token of the target is supervised")
    for position in supervised:
        start, end = offsets[position]
        if not any(span_start <= start and end <= span_end
                   for span_start, span_end in rendered.supervised_spans):
            raise MaskingError(f"supervised token {position} ({start}-{end}) lies outside "
                               "every assistant span")
    end_id = _end_token_id(tokenizer, end_of_turn)
    span_end = rendered.supervised_spans[-1][1]
    if end_id is not None:
        if input_ids[supervised[-1]] != end_id:
            raise MaskingError(f"the last supervised token is {input_ids[supervised[-1]]}, "
                               f"not the end-of-turn token {end_id} ({end_of_turn})")
    else:
        covering = [position for position, (start, end) in enumerate(offsets)
                    if start < span_end <= end]
        if not covering or labels[covering[0]] == IGNORE_INDEX:
            raise MaskingError(f"the end-of-turn marker {end_of_turn!r} is not supervised")


def history_groups(messages: list[dict]) -> list[tuple[int, int]]:
    """Return [start, end) of each droppable assistant/tool group, oldest first.

    Only groups after the first user message and before the last group preceding the
    target are droppable; the target is the last message.
    """
    first_user = next((index for index, message in enumerate(messages)
                       if message.get("role") == "user"), None)
    if first_user is None:
        return []
    groups = []
    index = first_user + 1
    last = len(messages) - 1
    while index < last:
        if messages[index].get("role") != "assistant":
            index += 1
            continue
        end = index + 1
        while end < last and messages[end].get("role") == "tool":
            end += 1
        groups.append((index, end))
        index = end
    # The newest group contains the results the target reacts to, so it stays.
    return groups[:-1]


@dataclass
class FittedExample:
    messages: list[dict]
    tokenized: Tokenized
    history_dropped: int          # assistant/tool groups dropped to fit max_length


def fit_example(messages: list[dict], tools: list[dict], renderer, tokenizer,
                max_length: int) -> FittedExample | None:
    """Render and tokenise, dropping oldest history groups until it fits; None if it cannot."""
    current = messages
    dropped = 0
    while True:
        tokenized = tokenize_rendered(renderer.render_example(current, tools), tokenizer,
                                      renderer.end_of_turn)
        if len(tokenized.input_ids) <= max_length:
            return FittedExample(current, tokenized, dropped)
        groups = history_groups(current)
        if not groups:
            return None
        start, end = groups[0]
        current = current[:start] + current[end:]
        dropped += 1


@dataclass
class TokenizeReport:
    examples: int = 0
    tokenized: int = 0
    history_shortened: int = 0
    history_groups_dropped: int = 0
    could_not_fit: int = 0
    could_not_fit_keys: list[str] = field(default_factory=list)
    render_errors: int = 0
    render_error_samples: list[str] = field(default_factory=list)
    boundary_straddles: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    max_tokens: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def tokenize_examples(examples: Iterable[dict], tokenizer, renderer,
                      max_length: int) -> tuple[list[dict], dict]:
    """Tokenise dataset examples ({"messages", "tools", "meta"}) for one base.

    Returns one row per example that fits, {"input_ids", "labels", "example_index",
    "messages", "history_dropped"}, and a report of what was shortened or left out.
    Raises MaskingError when a masking invariant breaks, because that corrupts training.
    """
    if max_length < 8:
        raise ReckonError(f"max_length {max_length} is too small; use at least a few hundred tokens")
    renderer = as_example_renderer(renderer)
    report = TokenizeReport()
    rows = []
    for index, example in enumerate(examples):
        report.examples += 1
        meta = example.get("meta") or {}
        key = f"{meta.get('trace_id')}#{meta.get('decision_index')}"
        try:
            fitted = fit_example(example["messages"], example.get("tools") or [], renderer,
                                 tokenizer, max_length)
        except MaskingError as error:
            raise MaskingError(f"example {key}: {error}") from None
        except RenderError as error:
            report.render_errors += 1
            if len(report.render_error_samples) < 20:
                report.render_error_samples.append(f"{key}: {error}")
            log.warning("example %s not rendered: %s", key, error)
            continue
        if fitted is None:
            report.could_not_fit += 1
            if len(report.could_not_fit_keys) < 100:
                report.could_not_fit_keys.append(key)
            continue
        tokenized = fitted.tokenized
        report.tokenized += 1
        report.boundary_straddles += tokenized.boundary_straddles
        if fitted.history_dropped:
            report.history_shortened += 1
            report.history_groups_dropped += fitted.history_dropped
        report.tokens += len(tokenized.input_ids)
        report.supervised_tokens += sum(1 for label in tokenized.labels if label != IGNORE_INDEX)
        report.max_tokens = max(report.max_tokens, len(tokenized.input_ids))
        rows.append({"input_ids": tokenized.input_ids, "labels": tokenized.labels,
                     "example_index": index, "messages": fitted.messages,
                     "history_dropped": fitted.history_dropped})
    if report.boundary_straddles:
        log.warning("%d token(s) start in the prompt and end in a target, so the start of "
                    "those targets is not supervised; check the renderer's turn boundary",
                    report.boundary_straddles)
    return rows, report.to_dict()
