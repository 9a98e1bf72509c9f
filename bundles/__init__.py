"""Frozen, signed versions of a LoRA specialist ("bundles").

A bundle is a read-only, content-addressed folder under <workspace>/bundles/<digest>/:

    manifest.json          what was frozen: adapter files, base model, data, eval, pack, ...
    adapter/...            the peft adapter (and optionally its GGUF LoRA)
    Modelfile              optional Ollama Modelfile
    SHA256SUMS             `sha256sum` lines for every file above, sorted by path
    model.sig              OpenSSF model-signing signature (sigstore bundle, DSSE, in-toto)

The version digest is the SHA-256 of SHA256SUMS, so `sha256sum -c SHA256SUMS` followed by
`sha256sum SHA256SUMS` checks a bundle with standard tools, and `model_signing verify key`
checks its signature.

Modules: keys (site key and keyring), manifest (file sets and digests), freeze, sign
(sign and verify), archive (export and import), gguf_lora (peft LoRA to GGUF LoRA),
ollama (Modelfile).
"""

from bundles.errors import (AdapterExportError, ArchiveError, BundleError, IntegrityError,
                            KeyringError, VersionNotFoundError)

__all__ = [
    "AdapterExportError", "ArchiveError", "BundleError", "IntegrityError", "KeyringError",
    "VersionNotFoundError",
]
