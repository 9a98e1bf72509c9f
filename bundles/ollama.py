"""An Ollama Modelfile that serves a bundle's GGUF LoRA on the evaluated base GGUF.

    FROM /path/to/base.gguf
    ADAPTER ./adapter/adapter.gguf
    TEMPLATE \"\"\"...the specialist format (reckon-specialist-v1)...\"\"\"
    PARAMETER stop "<end_of_turn>"
    PARAMETER temperature 0

Ollama resolves a relative ADAPTER path against the Modelfile's folder, so the Modelfile
written into a bundle refers to adapter/adapter.gguf inside it. The FROM path is the base
model file at the site that wrote the Modelfile. A receiving site regenerates the file
with `reckon bundle modelfile` or edits that line.

The TEMPLATE renders each message as appliance.formats.SpecialistRenderer does: the system
text first, then one transcript line per message ("User: ...", "Model: ...<end_of_turn>",
"Tool: ..."), and ends with the generation prompt "Model:".
NOTE: it renders message content as given. The renderer also writes the tool listing into
the system turn and tool calls and results as canonical JSON; Ollama's structured `tools`
and `tool_calls` cannot reproduce those bytes, so a client must send the system prompt with
the tool listing and the assistant/tool turns already rendered as text (see
docs/receiving-site-guide.md), or use llama.cpp with the appliance's renderer.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.formats import END, MODEL, TOOL, USER, SpecialistRenderer

# Ollama role -> the text the specialist format writes before and after the content.
ROLE_AFFIXES = {
    "system": ("", "\n\n"),
    "user": (f"{USER} ", "\n"),
    "assistant": (f"{MODEL} ", f"{END}\n"),
    "tool": (f"{TOOL} ", "\n"),
}


def turn_affixes(role: str) -> tuple[str, str]:
    """Return the text written before and after a message's content for `role`."""
    return ROLE_AFFIXES[role]


def specialist_template() -> str:
    """Return the Go template (Ollama TEMPLATE) for the specialist format."""
    branches = []
    for index, role in enumerate(ROLE_AFFIXES):
        before, after = turn_affixes(role)
        keyword = "if" if index == 0 else "else if"
        branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}')
    generation_prompt = MODEL
    # No "{{-" trim markers: they would also strip the newline that ends each turn.
    return "{{ range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + generation_prompt


def render_modelfile(base_gguf: str | os.PathLike, adapter_gguf: str | os.PathLike, *,
                     num_ctx: int | None = None) -> str:
    """Return Modelfile text; paths are written as given (absolute or Modelfile-relative)."""
    renderer = SpecialistRenderer()
    lines = [
        f"# Reckoning specialist, prompt format {renderer.name}",
        f"FROM {_quote(base_gguf)}",
        f"ADAPTER {_quote(adapter_gguf)}",
        f'TEMPLATE """{specialist_template()}"""',
    ]
    # Stops that contain a newline cannot be written in a Modelfile string; the two kept
    # here end every action the specialist was trained to produce.
    for stop in renderer.stop:
        if "\n" not in stop:
            lines.append(f'PARAMETER stop "{stop}"')
    lines.append("PARAMETER temperature 0")
    if num_ctx is not None:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return "\n".join(lines) + "\n"


def write_modelfile(out_path: str | os.PathLike, base_gguf: str | os.PathLike,
                    adapter_gguf: str | os.PathLike, *, num_ctx: int | None = None) -> Path:
    out_path = Path(out_path)
    out_path.write_text(render_modelfile(base_gguf, adapter_gguf, num_ctx=num_ctx),
                        encoding="utf-8")
    return out_path


def _quote(path: str | os.PathLike) -> str:
    text = str(path)
    if any(char in text for char in '\n\r"'):
        raise ValueError(f"path {text!r} contains a newline or double quote, which a "
                         "Modelfile line cannot hold")
    return f'"{text}"' if any(char.isspace() for char in text) else text
