"""Base weights for training: local HF folders, GGUF files and models in a local Ollama store.

GGUF bases are dequantised once into a plain safetensors checkpoint under
<cache>/dequantised/<gguf digest>/, because transformers 5.x either keeps GGUF weights packed
(computing in fp32 kernels, so bf16 buys nothing) or dequantises on every load (tens of
seconds even for Gemma 3 270M). Later loads read the cached checkpoint in the requested dtype.

Ollama stores its models as content-addressed blobs: the manifest
<models>/manifests/registry.ollama.ai/library/<name>/<tag> lists layers, and the layer with
mediaType application/vnd.ollama.image.model names the GGUF blob <models>/blobs/sha256-<hex>.
<models> is OLLAMA_MODELS, else ~/.ollama/models (Ollama's default for a user install).

Only this module's loader functions import torch and transformers, so that `resolve_base`
can find Ollama models without them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from appliance.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
GGUF_MAGIC = b"GGUF"
DEQUANTISED_FORMAT = 1      # bump when the cached checkpoint layout changes


# -- Ollama store ----------------------------------------------------------------------------

def ollama_models_dir() -> Path:
    configured = os.environ.get("OLLAMA_MODELS")
    return Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """Split an Ollama model name into (registry, namespace, model, tag).

    "qwen2.5:3b" -> (registry.ollama.ai, library, qwen2.5, 3b); "qwen2.5" gets tag "latest";
    "user/model:tag" and "host/namespace/model:tag" name other namespaces and registries.
    """
    text = name.strip()
    if text.startswith("ollama:"):
        text = text[len("ollama:"):]
    if not text or any(part in ("", ".", "..") for part in text.split("/")):
        raise ConfigError(f"Ollama model name {name!r} is invalid; use a name such as 'qwen2.5:3b'")
    path, _, tag = text.rpartition(":") if ":" in text.split("/")[-1] else (text, "", "latest")
    tag = tag or "latest"
    parts = path.split("/")
    if len(parts) == 1:
        return OLLAMA_REGISTRY, "library", parts[0], tag
    if len(parts) == 2:
        return OLLAMA_REGISTRY, parts[0], parts[1], tag
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], tag
    raise ConfigError(f"Ollama model name {name!r} has too many '/' parts; "
                      "use model:tag, namespace/model:tag or registry/namespace/model:tag")


def list_ollama_models(models_dir: Path | None = None) -> list[str]:
    """Return the model names with a manifest in the store, as `ollama list` shows them."""
    root = (models_dir or ollama_models_dir()) / "manifests"
    names = []
    for manifest in sorted(root.glob("*/*/*/*")):
        if not manifest.is_file():
            continue
        registry, namespace, model, tag = manifest.relative_to(root).parts
        prefix = "" if (registry, namespace) == (OLLAMA_REGISTRY, "library") else (
            f"{namespace}/" if registry == OLLAMA_REGISTRY else f"{registry}/{namespace}/")
        names.append(f"{prefix}{model}:{tag}")
    return names


def find_ollama_model(name: str, models_dir: Path | None = None) -> tuple[Path, str]:
    """Return (GGUF blob path, "sha256:<hex>") of a model in the local Ollama store."""
    models_dir = Path(models_dir) if models_dir else ollama_models_dir()
    registry, namespace, model, tag = parse_ollama_name(name)
    if not (models_dir / "manifests").is_dir():
        raise NotFoundError(
            f"Ollama model {name!r}: no Ollama store at {models_dir} (no manifests/ folder); "
            "set OLLAMA_MODELS to the folder Ollama keeps its models in")

    manifest_path = models_dir / "manifests" / registry / namespace / model / tag
    if not manifest_path.is_file():
        available = ", ".join(list_ollama_models(models_dir)) or "none"
        raise NotFoundError(f"Ollama model {name!r} not found: no manifest {manifest_path}; "
                            f"models in this store: {available}")

    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{manifest_path}: not a readable JSON manifest ({error})") from None

    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list):
        raise ConfigError(f"{manifest_path}: field 'layers' is missing or not a list")
    model_layers = [layer for layer in layers
                    if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE]
    if not model_layers:
        raise ConfigError(f"{manifest_path}: no layer has mediaType {OLLAMA_MODEL_MEDIA_TYPE}; "
                          "the model has no weights in this store")

    digest = model_layers[0].get("digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise ConfigError(f"{manifest_path}: model layer field 'digest' is {digest!r}, "
                          "expected 'sha256:' and 64 hex digits")

    blob = models_dir / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise NotFoundError(f"Ollama model {name!r}: weights blob {blob} named by {manifest_path} "
                            f"is missing; run `ollama pull {name}` where the store is writable")
    with open(blob, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ConfigError(f"Ollama model {name!r}: blob {blob} is not a GGUF file")
    # NOTE: the blob is not hashed again here. Its name is the sha256 that Ollama checked on
    # pull, and hashing a multi-GB blob on every resolve would cost minutes.
    return blob, digest


def looks_like_ollama_name(spec: str) -> bool:
    """Whether a base spec that is not an existing path should be looked up in the Ollama store."""
    if spec.startswith("ollama:"):
        return True
    if spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec:
        return False
    return ":" in spec or "/" not in spec


# -- loading weights ---------------------------------------------------------------------------

def check_no_pickle_only(folder: Path) -> None:
    """Reject an HF folder whose weights exist only as pickle files, naming the file."""
    safetensors = list(folder.glob("*.safetensors"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not safetensors:
        raise ConfigError(
            f"base folder {folder}: weights file {pickles[0]} is a pickle; pickle files can run "
            "code when loaded, so only safetensors are accepted. Convert it to safetensors on a "
            "trusted machine (e.g. `model.save_pretrained(out, safe_serialization=True)`).")
    if not safetensors:
        raise ConfigError(f"base folder {folder} has no *.safetensors weights")


def dequantised_dir(digest: str) -> Path:
    from appliance.models import cache_dir

    return cache_dir() / "dequantised" / digest.split(":")[-1][:32]


def dequantised_checkpoint(gguf_path: Path, digest: str) -> Path:
    """Return an HF folder with the GGUF's weights dequantised to fp32 safetensors, building it once.

    fp32 stores the values transformers dequantised without rounding them again, so a bf16
    load rounds once. With the embedded Gemma 3 270M, an fp32 load of this checkpoint gave the
    same logits (max difference 0.0) as loading the GGUF directly with transformers 5.25.
    """
    folder = dequantised_dir(digest)
    marker = folder / "reckon-dequantised.json"
    if marker.is_file():
        return folder

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GgufConfig

    log.info("dequantising %s (%s) into %s; later loads read that cache", gguf_path, digest, folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True))
    except (ValueError, KeyError, RuntimeError) as error:
        raise ConfigError(f"GGUF base {gguf_path}: transformers could not load it ({error}); "
                          "its architecture or quantisation type may be unsupported") from None

    state = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if tied and output is not None and output.weight.data_ptr() == embeddings.data_ptr():
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    state = {key: tensor.detach().to(torch.float32).contiguous() for key, tensor in state.items()}

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32

    # Build in a temporary sibling and rename, so an interrupted run leaves no half cache.
    staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config.save_pretrained(str(staging))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(staging))
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "reckon-dequantised.json").write_text(json.dumps(
        {"source": str(gguf_path), "gguf_digest": digest, "dtype": "float32",
         "format": DEQUANTISED_FORMAT}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def load_base_model(base, dtype, attn_implementation: str = "sdpa"):
    """Load a resolved appliance.models.BaseModel as a transformers causal LM in `dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    # The CLI draws its own progress bar; transformers' per-tensor bars would interleave.
    transformers_logging.disable_progress_bar()

    if base.kind == "hf":
        check_no_pickle_only(base.path)
        folder = base.path
    elif base.kind == "gguf":
        folder = dequantised_checkpoint(base.path, base.digest)
    else:
        raise ConfigError(f"base {base.spec!r}: unknown kind {base.kind!r}")
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                                attn_implementation=attn_implementation)
