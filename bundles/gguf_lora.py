"""Convert a peft LoRA adapter of a Gemma 3 model into a GGUF LoRA that llama.cpp loads.

llama.cpp applies a LoRA adapter to a GGUF base model at load time (`--lora FILE`, or the
ADAPTER line of an Ollama Modelfile), so the specialist is served from the same base GGUF
that was evaluated, without merging. The file layout follows llama.cpp's
convert_lora_to_gguf.py:

- metadata: general.type = "adapter", general.architecture = "gemma3",
  adapter.type = "lora", adapter.lora.alpha = lora_alpha;
- tensors: `blk.N.<module>.weight.lora_a` contains peft's lora_A (numpy shape (r, in), GGUF
  dims [in, r]) and `...lora_b` contains lora_B (numpy shape (out, r), GGUF dims [r, out]),
  for the modules attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up and ffn_down.

llama.cpp scales each delta by alpha / r, with r read from the lora_a tensor, which
matches peft's default scaling. rsLoRA (alpha / sqrt(r)) is converted by writing
alpha * sqrt(r) as the alpha.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np

from bundles.errors import AdapterExportError

log = logging.getLogger(__name__)

ARCHITECTURE = "gemma3"

# peft module name (the last part of the Linear's path) -> llama.cpp tensor name.
MODULE_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# Prefixes under which peft stores a Gemma 3 decoder layer: Gemma3ForCausalLM, and the
# text tower of Gemma3ForConditionalGeneration in transformers 4.5x and 5.x.
_KEY = re.compile(
    r"^base_model\.model\.(?:model\.language_model\.|language_model\.model\.|model\.)?"
    r"layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
    r"\.lora_([AB])\.weight$")


def export_gguf_lora(adapter_dir: str | os.PathLike, out_path: str | os.PathLike,
                     base_gguf_path: str | os.PathLike | None = None) -> Path:
    """Write adapter_dir's LoRA as a GGUF LoRA at out_path and return out_path.

    With base_gguf_path, the base model's architecture and every target tensor's shape
    are checked against the adapter first. Raises AdapterExportError, before writing
    anything, for adapters llama.cpp cannot apply: DoRA, modules_to_save (full copies of
    the embedding, LM head or other weights), LoRA biases, target modules other than the
    attention and MLP projections, and per-module alpha values.
    """
    import gguf
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    out_path = Path(out_path)
    config = _read_config(adapter_dir)
    alpha = _effective_alpha(config, adapter_dir)
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise AdapterExportError(f"{weights_path} is missing; save the adapter with "
                                 "save_pretrained(safe_serialization=True)")
    tensors = load_file(str(weights_path))
    pairs = _pair_tensors(tensors, weights_path)
    if config.get("use_rslora") and len({a.shape[0] for a, _ in pairs.values()}) > 1:
        raise AdapterExportError(f"{adapter_dir}: rsLoRA with different ranks per module "
                                 "cannot be expressed with llama.cpp's single alpha")
    if base_gguf_path is not None:
        _check_against_base(pairs, Path(base_gguf_path))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(temporary), arch=ARCHITECTURE)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        name = config.get("base_model_name_or_path")
        if isinstance(name, str) and name:
            writer.add_string(gguf.Keys.General.NAME, f"LoRA for {name}")
        for tensor_name in sorted(pairs, key=_tensor_order):
            lora_a, lora_b = pairs[tensor_name]
            # f32 keeps the adapter exact; for r=4..64 adapters of a small model the
            # file stays a few megabytes.
            writer.add_tensor(f"{tensor_name}.lora_a", np.ascontiguousarray(lora_a, np.float32))
            writer.add_tensor(f"{tensor_name}.lora_b", np.ascontiguousarray(lora_b, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, out_path)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    log.info("wrote GGUF LoRA %s (%d tensor pairs, alpha %s) from %s", out_path, len(pairs),
             alpha, adapter_dir)
    return out_path


def _read_config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterExportError(f"{path} is missing; expected a peft LoRA folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterExportError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterExportError(f"{path}: peft_type must be 'LORA'")
    if config.get("use_dora"):
        raise AdapterExportError(f"{path}: use_dora is true; llama.cpp cannot apply DoRA "
                                 "adapters. Train without DoRA or merge the adapter instead")
    if config.get("modules_to_save"):
        raise AdapterExportError(
            f"{path}: modules_to_save {config['modules_to_save']} stores full weights "
            "(such as the embedding or LM head) that a llama.cpp LoRA cannot carry; train "
            "without modules_to_save or merge the adapter instead")
    if config.get("bias", "none") != "none":
        raise AdapterExportError(f"{path}: bias={config['bias']!r} trains bias vectors that "
                                 "llama.cpp LoRAs do not support; use bias='none'")
    if config.get("fan_in_fan_out"):
        raise AdapterExportError(f"{path}: fan_in_fan_out is for Conv1D models (GPT-2), "
                                 "not Gemma 3")
    if config.get("layer_replication"):
        raise AdapterExportError(f"{path}: layer_replication is not supported by llama.cpp")
    return config


def _effective_alpha(config: dict, adapter_dir: Path) -> float:
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterExportError(f"{adapter_dir / 'adapter_config.json'}: lora_alpha "
                                 f"{alpha!r} must be a positive number")
    pattern = config.get("alpha_pattern") or {}
    if any(value != alpha for value in pattern.values()):
        raise AdapterExportError(f"{adapter_dir / 'adapter_config.json'}: alpha_pattern sets "
                                 "per-module alpha values; llama.cpp has one alpha per adapter")
    if config.get("use_rslora"):
        rank = config.get("r")
        if not isinstance(rank, int) or rank <= 0:
            raise AdapterExportError(f"{adapter_dir / 'adapter_config.json'}: r must be a "
                                     "positive integer")
        return float(alpha) * math.sqrt(rank)
    return float(alpha)


def _pair_tensors(tensors: dict[str, np.ndarray], source: Path) -> dict[str, tuple]:
    """Map llama.cpp base tensor names to (lora_A, lora_B); reject anything else."""
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterExportError(f"{source}: tensor {key!r} is not a LoRA A/B matrix of "
                                     f"a supported module ({', '.join(MODULE_NAMES)}); "
                                     f"{_explain_unsupported(key)}")
        layer, module, half = match.groups()
        name = f"blk.{int(layer)}.{MODULE_NAMES[module]}.weight"
        halves.setdefault(name, {})[half] = value
    if not halves:
        raise AdapterExportError(f"{source}: contains no LoRA tensors")

    pairs = {}
    for name, found in halves.items():
        if set(found) != {"A", "B"}:
            raise AdapterExportError(f"{source}: {name} has lora_{next(iter(found))} but not "
                                     "its other half")
        lora_a, lora_b = found["A"], found["B"]
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
            raise AdapterExportError(f"{source}: {name}: lora_A {lora_a.shape} and lora_B "
                                     f"{lora_b.shape} do not form (r, in) and (out, r)")
        pairs[name] = (lora_a.astype(np.float32), lora_b.astype(np.float32))
    return pairs


def _explain_unsupported(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return "it is a DoRA magnitude vector, which llama.cpp cannot apply"
    if "embed_tokens" in key or "lm_head" in key:
        return "adapters on the embedding or LM head are not supported; target only the projections"
    if "modules_to_save" in key or not (".lora_A." in key or ".lora_B." in key):
        return "full weights (modules_to_save) cannot be carried by a llama.cpp LoRA"
    return "retrain with target_modules limited to q/k/v/o/gate/up/down projections"


def _tensor_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name


def _check_against_base(pairs: dict[str, tuple], base_path: Path) -> None:
    if not base_path.is_file():
        raise AdapterExportError(f"base GGUF {base_path} does not exist")
    architecture, shapes = read_gguf_header(base_path)
    if architecture != ARCHITECTURE:
        raise AdapterExportError(f"{base_path}: architecture {architecture!r} is not "
                                 f"{ARCHITECTURE!r}; this converter writes Gemma 3 LoRAs")
    for name, (lora_a, lora_b) in pairs.items():
        if name not in shapes:
            raise AdapterExportError(f"{base_path}: has no tensor {name}; the adapter was "
                                     "trained on a model with more layers")
        fan_in, fan_out = shapes[name][0], shapes[name][1]
        if lora_a.shape[1] != fan_in or lora_b.shape[0] != fan_out:
            raise AdapterExportError(
                f"{name}: adapter shapes A {lora_a.shape} and B {lora_b.shape} do not fit "
                f"the base tensor (in {fan_in}, out {fan_out}) in {base_path}")


# -- minimal GGUF header reader ------------------------------------------------------------
# gguf.GGUFReader builds numpy views of every metadata value, which takes about 20 s for
# Gemma's 262k-entry vocabulary on a 2-core machine. Shape checks need only
# general.architecture and the tensor infos, so this reader skips the other values.

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def read_gguf_header(path: Path) -> tuple[str | None, dict[str, list[int]]]:
    """Return (general.architecture, {tensor name: ggml dims}) of a GGUF v2/v3 file."""
    import mmap
    import struct

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise AdapterExportError(f"{path} is not a GGUF file (bad magic)")
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", data, 4)
        if version not in (2, 3):
            raise AdapterExportError(f"{path}: GGUF version {version} is not supported")
        offset = 24

        def read_string(position: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", data, position)
            start = position + 8
            return bytes(data[start:start + length]).decode("utf-8", "replace"), start + length

        def skip_value(kind: int, position: int) -> int:
            if kind in _SCALAR_SIZES:
                return position + _SCALAR_SIZES[kind]
            if kind == _STRING:
                (length,) = struct.unpack_from("<Q", data, position)
                return position + 8 + length
            if kind == _ARRAY:
                item_kind, count = struct.unpack_from("<IQ", data, position)
                position += 12
                if item_kind in _SCALAR_SIZES:
                    return position + count * _SCALAR_SIZES[item_kind]
                for _ in range(count):
                    position = skip_value(item_kind, position)
                return position
            raise AdapterExportError(f"{path}: unknown GGUF value type {kind}")

        architecture = None
        try:
            for _ in range(kv_count):
                key, offset = read_string(offset)
                (kind,) = struct.unpack_from("<I", data, offset)
                offset += 4
                if key == "general.architecture" and kind == _STRING:
                    architecture, offset = read_string(offset)
                else:
                    offset = skip_value(kind, offset)
            shapes: dict[str, list[int]] = {}
            for _ in range(tensor_count):
                name, offset = read_string(offset)
                (n_dims,) = struct.unpack_from("<I", data, offset)
                dims = list(struct.unpack_from(f"<{n_dims}Q", data, offset + 4))
                offset += 4 + 8 * n_dims + 4 + 8  # dims, then ggml type and data offset
                shapes[name] = dims
        except struct.error:
            raise AdapterExportError(f"{path}: the GGUF header is truncated") from None
    return architecture, shapes
