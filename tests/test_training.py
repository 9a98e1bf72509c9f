"""Unit tests of the LoRA trainer's parts: config, data, loss, bases and the Ollama store."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from appliance.errors import ConfigError, NotFoundError, ReckonError  # noqa: E402
from appliance.training.bases import (check_no_pickle_only, find_ollama_model,  # noqa: E402
                                      list_ollama_models, load_base_model, parse_ollama_name)
from appliance.training.config import TrainConfig  # noqa: E402
from appliance.training.data import (IGNORE_INDEX, Example, collate,  # noqa: E402
                                     manifest_base_digest, plan_epoch, read_tokenized,
                                     tokenize_conversation)
from appliance.training.trainer import (SupervisedLoss, cosine_with_warmup,  # noqa: E402
                                        full_logits_loss, head_cross_entropy,
                                        shared_prefix_length)

def tiny_gemma(softcap: float | None = 30.0, vocab: int = 128, seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, max_position_embeddings=256, sliding_window=16,
                              final_logit_softcapping=softcap, pad_token_id=0)
    return Gemma3ForCausalLM(config)


def random_examples(count: int, vocab: int = 128, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        length = rng.randint(8, 40)
        ids = [rng.randint(4, vocab - 1) for _ in range(length)]
        prompt = rng.randint(2, length - 2)
        examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


# -- config -------------------------------------------------------------------------------------

def test_config_defaults_target_all_projections():
    config = TrainConfig()
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"}
    lora = config.lora_config()
    assert lora.r == 16
    assert lora.lora_alpha == 32


@pytest.mark.parametrize("field,value", [("r", 0), ("batch_size", -1), ("lora_dropout", 1.5),
                                         ("precision", "fp8"), ("patience", 0),
                                         ("learning_rate", 0.0), ("target_modules", []),
                                         ("share_prefix", "yes")])
def test_config_rejects_invalid_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_config_from_dict_names_unknown_field():
    with pytest.raises(ConfigError, match="lora_rank"):
        TrainConfig.from_dict({"lora_rank": 8})
    assert TrainConfig.from_dict(TrainConfig(r=4).to_dict()).r == 4


# -- data -----------------------------------------------------------------------------------------

def test_read_tokenized_errors_name_file_and_line(tmp_path):
    cases = {
        "not json": "invalid JSON",
        json.dumps({"input_ids": [1, 2], "labels": [1]}): "must align",
        json.dumps({"input_ids": [1, "x"], "labels": [1, 2]}): "'input_ids' must be a list of integers",
        json.dumps({"input_ids": [], "labels": []}): "empty",
        json.dumps({"input_ids": [1, 2], "labels": [-5, 2]}): "other than -100",
    }
    for line, message in cases.items():
        path = tmp_path / "train.jsonl"
        path.write_text(json.dumps({"input_ids": [1, 2], "labels": [-100, 2]}) + "\n" + line + "\n")
        with pytest.raises(ConfigError) as caught:
            read_tokenized(path)
        assert f"{path}:2" in str(caught.value)
        assert message in str(caught.value)


def test_read_tokenized_truncates_to_max_length(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"input_ids": list(range(10)), "labels": list(range(10))}) + "\n")
    (example,) = read_tokenized(path, max_length=4)
    assert example.input_ids == [0, 1, 2, 3]
    assert example.labels == [0, 1, 2, 3]


def test_plan_epoch_covers_every_example_once():
    lengths = [random.Random(i).randint(5, 500) for i in range(203)]
    plan = plan_epoch(lengths, batch_size=8, seed=3, epoch=0, group_factor=4)
    flat = sorted(i for batch in plan for i in batch)
    assert flat == list(range(203))
    assert plan == plan_epoch(lengths, batch_size=8, seed=3, epoch=0, group_factor=4)
    assert plan != plan_epoch(lengths, batch_size=8, seed=3, epoch=1, group_factor=4)


def test_plan_epoch_groups_lengths_to_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(10, 1000) for _ in range(400)]
    random_batches = [list(range(i, i + 8)) for i in range(0, 400, 8)]
    random_padded = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert random_padded > 1.5 * sum(lengths)
    for factor, bound in ((8, 1.2), (50, 1.05)):
        plan = plan_epoch(lengths, batch_size=8, seed=0, epoch=0, group_factor=factor)
        padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in plan)
        assert padded < bound * sum(lengths), factor


def test_manifest_base_digest_sources():
    curated = {"tokenizer": {"base_spec": "embedded", "weights_digest": "sha256:aa"}}
    assert manifest_base_digest(curated) == "sha256:aa"
    assert manifest_base_digest({"base": {"weights_digest": "sha256:bb"}}) == "sha256:bb"
    assert manifest_base_digest({"base_digest": "sha256:cc"}) == "sha256:cc"
    assert manifest_base_digest({"tokenizer": {"class": "GemmaTokenizer"}}) is None


def test_collate_right_pads_and_masks():
    examples = [Example([5, 6, 7], [-100, 6, 7]), Example([8, 9], [-100, 9])]
    input_ids, labels = collate(examples, [0, 1], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert labels.tolist() == [[-100, 6, 7], [-100, 9, -100]]


def test_tokenize_conversation_supervises_assistant_action():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from appliance.formats import SpecialistRenderer

    # A character-level tokenizer makes the expected labels easy to state.
    alphabet = sorted(set("abcdefghijklmnopqrstuvwxyz_{}\"':,<>/ \n#ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789."))
    vocab = {char: index for index, char in enumerate(alphabet)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=" "))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    renderer = SpecialistRenderer()
    example = tokenize_conversation(tokenizer, renderer, messages, [])
    rendered = renderer.render(messages, [])
    start, end = rendered.supervised_spans[0]
    supervised = "".join(alphabet[label] for label in example.labels if label != IGNORE_INDEX)
    assert supervised == rendered.text[start:end]
    assert supervised.lstrip().startswith("ok")
    assert supervised.endswith("<end_of_turn>")


# -- loss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("softcap", [None, 30.0])
def test_supervised_loss_matches_full_logits(softcap):
    model = tiny_gemma(softcap)
    examples = random_examples(3)
    input_ids, labels = collate(examples, [0, 1, 2], pad_id=0)
    loss_fn = SupervisedLoss(model)
    fast, count = loss_fn(input_ids, labels)
    reference = full_logits_loss(model, input_ids, labels)
    assert count == sum(e.supervised_targets for e in examples)
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-4)

    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    reference.backward()
    reference_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(fast_grads) == len(reference_grads)
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        assert torch.allclose(fast_grad, reference_grad, rtol=1e-4, atol=1e-5)


def shared_prefix_batch(vocab: int = 128, prefix: int = 24, seed: int = 1):
    """Rows that start with the same `prefix` tokens, then differ; longer than the window."""
    rng = random.Random(seed)
    head = [rng.randint(4, vocab - 1) for _ in range(prefix)]
    examples = []
    for length in (14, 30, 9, 22):
        tail = [rng.randint(4, vocab - 1) for _ in range(length)]
        ids = head + tail
        cut = prefix + rng.randint(1, 4)
        examples.append(Example(ids, [IGNORE_INDEX] * cut + ids[cut:]))
    return examples


def lora_gemma(softcap: float | None = 30.0):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gemma(softcap), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            # peft starts B at zero; random values make the test see every LoRA gradient path.
            torch.nn.init.normal_(param, std=0.1)
    return model


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_shared_prefix_matches_full_batch(softcap):
    model = lora_gemma(softcap)
    examples = shared_prefix_batch()
    input_ids, labels = collate(examples, [0, 1, 2, 3], pad_id=0)
    causal_lm = model.get_base_model()
    shared_fn = SupervisedLoss(causal_lm, share_prefix=True)
    plain_fn = SupervisedLoss(causal_lm, share_prefix=False)

    # 24 common tokens plus up to 30 more crosses the sliding window of 16 on both sides.
    assert shared_prefix_length(input_ids, labels) == 24
    shared, shared_count = shared_fn(input_ids, labels)
    shared.backward()
    shared_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    plain, plain_count = plain_fn(input_ids, labels)
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    assert shared_count == plain_count == sum(e.supervised_targets for e in examples)
    assert torch.allclose(shared, plain, rtol=1e-5, atol=1e-4)
    assert shared_grads
    assert shared_grads.keys() == plain_grads.keys()
    for name, grad in shared_grads.items():
        assert torch.allclose(grad, plain_grads[name], rtol=1e-4, atol=1e-5), name
        assert grad.abs().sum() > 0, name


def test_shared_prefix_stops_before_labels():
    ids = torch.tensor([[5] * 30 + [6, 7], [5] * 30 + [8, 9]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 20:] = ids[0, 20:]
    labels[1, 31:] = ids[1, 31:]
    # Row 0 is supervised from position 20, so the hidden state at 19 must run per row.
    assert shared_prefix_length(ids, labels) == 19
    # Identical rows still leave the supervised part to the per-row pass.
    assert shared_prefix_length(ids[:1].repeat(3, 1), labels[:1].repeat(3, 1)) == 19
    # One row, or rows that differ from the first token, share nothing.
    assert shared_prefix_length(ids[:1], labels[:1]) == 0
    assert shared_prefix_length(torch.tensor([[1, 2], [3, 2]]), torch.tensor([[1, 2], [3, 2]])) == 0


def test_shared_prefix_skipped_below_threshold():
    model = tiny_gemma()
    examples = random_examples(3)
    input_ids, labels = collate(examples, [0, 1, 2], pad_id=0)
    assert shared_prefix_length(input_ids, labels) < 16
    fast, _ = SupervisedLoss(model)(input_ids, labels)
    assert torch.allclose(fast, full_logits_loss(model, input_ids, labels), rtol=1e-5, atol=1e-4)


def test_head_cross_entropy_chunks_agree(monkeypatch):
    import appliance.training.trainer as trainer_module

    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (37,))
    whole = head_cross_entropy(hidden, weight, targets, 5.0)
    (whole_grad,) = torch.autograd.grad(whole, hidden)
    monkeypatch.setattr(trainer_module, "LOGITS_PER_CHUNK", 50 * 4)   # 4 rows per chunk
    chunked = head_cross_entropy(hidden, weight, targets, 5.0)
    (chunked_grad,) = torch.autograd.grad(chunked, hidden)
    assert torch.allclose(whole, chunked, rtol=1e-6)
    assert torch.allclose(whole_grad, chunked_grad, atol=1e-6)


def test_cosine_schedule_warms_up_then_decays():
    multiplier = cosine_with_warmup(warmup=4, total=20, min_ratio=0.1)
    warm = [multiplier(step) for step in range(4)]
    assert warm == sorted(warm)
    assert warm[-1] < 1.0
    assert multiplier(4) == pytest.approx(1.0)
    assert multiplier(19) < multiplier(10) < multiplier(5)
    assert multiplier(20) == pytest.approx(0.1)


# -- bases ------------------------------------------------------------------------------------------

def test_pickle_only_folder_is_rejected_naming_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError) as caught:
        check_no_pickle_only(tmp_path)
    assert "pytorch_model.bin" in str(caught.value)
    assert "safetensors" in str(caught.value)


def test_hf_folder_loads_from_safetensors(tmp_path):
    from appliance.models import resolve_base

    model = tiny_gemma()
    model.save_pretrained(str(tmp_path))
    (tmp_path / "training_args.bin").write_bytes(b"ignored because safetensors exist")
    loaded = load_base_model(resolve_base(str(tmp_path)), torch.float32)
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)


def write_tiny_gguf(path: Path) -> None:
    """Write a 2-layer Gemma 3 GGUF with random weights, two tensors quantised to Q8_0."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    hidden, layers, heads, kv_heads, head_dim, ffn, vocab = 64, 2, 2, 1, 32, 128, 256
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma3")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_sliding_window(16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>"] + [f"t{i}" for i in range(vocab - 4)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([3, 3, 3, 2] + [1] * (vocab - 4))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    rng = np.random.default_rng(0)

    def tensor(name, shape, quantised=False):
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if quantised:
            writer.add_tensor(name, quantize(values, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)

    tensor("token_embd.weight", (vocab, hidden), quantised=True)
    tensor("output_norm.weight", (hidden,))
    for layer in range(layers):
        prefix = f"blk.{layer}."
        tensor(prefix + "attn_q.weight", (heads * head_dim, hidden), quantised=True)
        tensor(prefix + "attn_k.weight", (kv_heads * head_dim, hidden))
        tensor(prefix + "attn_v.weight", (kv_heads * head_dim, hidden))
        tensor(prefix + "attn_output.weight", (hidden, heads * head_dim))
        for norm, size in (("attn_q_norm", head_dim), ("attn_k_norm", head_dim),
                           ("attn_norm", hidden), ("post_attention_norm", hidden),
                           ("ffn_norm", hidden), ("post_ffw_norm", hidden)):
            tensor(prefix + norm + ".weight", (size,))
        tensor(prefix + "ffn_gate.weight", (ffn, hidden))
        tensor(prefix + "ffn_up.weight", (ffn, hidden))
        tensor(prefix + "ffn_down.weight", (hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_ollama_store(root: Path, gguf_path: Path, name="tiny", tag="latest") -> str:
    data = gguf_path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / digest.replace(":", "-")).write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64},
        {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": len(data)},
    ]}))
    return digest


@pytest.fixture
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def test_parse_ollama_names():
    assert parse_ollama_name("qwen2.5:3b") == ("registry.ollama.ai", "library", "qwen2.5", "3b")
    assert parse_ollama_name("qwen2.5") == ("registry.ollama.ai", "library", "qwen2.5", "latest")
    assert parse_ollama_name("me/model:v1") == ("registry.ollama.ai", "me", "model", "v1")
    assert parse_ollama_name("ollama:host/ns/m:t") == ("host", "ns", "m", "t")
    with pytest.raises(ConfigError):
        parse_ollama_name("a/../b:1")


def test_ollama_store_resolves_and_trains_base(tmp_path, tiny_gguf, monkeypatch):
    from appliance.models import resolve_base

    store = tmp_path / "ollama"
    digest = make_ollama_store(store, tiny_gguf, "tiny", "q8")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("RECKON_CACHE", str(tmp_path / "cache"))
    assert list_ollama_models() == ["tiny:q8"]

    base = resolve_base("tiny:q8")
    assert base.kind == "gguf"
    assert base.digest == digest
    assert base.identity["weights_digest"] == digest
    model = load_base_model(base, torch.float32)
    cached = tmp_path / "cache" / "dequantised" / digest.split(":")[1][:32]
    assert (cached / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())

    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name,
                                                  dtype=torch.float32)
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-5)


def test_ollama_store_error_paths(tmp_path, tiny_gguf):
    store = tmp_path / "ollama"
    with pytest.raises(NotFoundError, match="no Ollama store"):
        find_ollama_model("tiny", store)

    digest = make_ollama_store(store, tiny_gguf, "tiny", "latest")
    with pytest.raises(NotFoundError, match="models in this store: tiny:latest"):
        find_ollama_model("other:7b", store)

    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.write_text("{not json")
    with pytest.raises(ConfigError, match=str(manifest)):
        find_ollama_model("tiny", store)

    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.license",
                                                "digest": digest}]}))
    with pytest.raises(ConfigError, match="no layer has mediaType"):
        find_ollama_model("tiny", store)

    missing = "sha256:" + "a" * 64
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                "digest": missing}]}))
    with pytest.raises(NotFoundError, match="blob .* is missing"):
        find_ollama_model("tiny", store)

    (store / "blobs" / missing.replace(":", "-")).write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ConfigError, match="not a GGUF"):
        find_ollama_model("tiny", store)


def test_unknown_base_lists_options(tmp_path, monkeypatch):
    from appliance.models import resolve_base

    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))
    with pytest.raises(ReckonError, match="Ollama"):
        resolve_base("nonexistent-model:1b")
    with pytest.raises(ReckonError, match="not found"):
        resolve_base(str(tmp_path / "missing" / "folder"))
