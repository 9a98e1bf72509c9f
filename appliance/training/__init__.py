"""LoRA training of candidates on open bases (HF folders, GGUF files, the local Ollama store).

Importing this package loads neither torch nor transformers; the modules that need them
import them where they are used.
"""
