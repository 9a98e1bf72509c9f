"""Training configuration: one dataclass with peft-style LoRA fields and loop settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ConfigError

# Every linear projection of Gemma/Llama/Qwen-style attention and MLP blocks.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """LoRA hyperparameters (named as in peft.LoraConfig) and the training loop's settings."""

    # LoRA
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))

    # Optimisation. A step is one optimizer update over
    # batch_size * gradient_accumulation_steps * world_size sequences.
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    epochs: float = 3.0
    max_steps: int | None = None        # overrides epochs when set
    warmup_steps: int | None = None     # overrides warmup_ratio when set
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0           # cosine decays to learning_rate * min_lr_ratio
    max_length: int = 2048              # longer sequences are truncated from the right
    seed: int = 0

    # Validation, early stopping and checkpoints, in optimizer steps
    eval_steps: int = 50
    patience: int | None = None         # stop after this many evaluations without improvement
    save_steps: int = 100
    precision: str = "auto"             # auto | bf16 | fp32
    # Sequences are sorted by length within groups of batch_size * this. Larger groups pad less
    # but make batches more uniform in length, and so often in task, which made the validation
    # loss worse in short runs of benchmarks/bench_training.py.
    length_group_factor: int = 8
    # Run a micro-batch's common leading tokens (system prompt, tool list) once instead of
    # once per sequence. Without LoRA dropout the loss and gradients are the same either way.
    share_prefix: bool = True

    def __post_init__(self) -> None:
        self.target_modules = list(self.target_modules)
        self.validate()

    def validate(self) -> None:
        positive = ("r", "lora_alpha", "batch_size", "gradient_accumulation_steps", "max_length",
                    "eval_steps", "save_steps", "length_group_factor")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"training config: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"training config: lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"training config: learning_rate must be > 0, got {self.learning_rate!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"training config: max_steps must be >= 1, got {self.max_steps!r}")
        if self.max_steps is None and not self.epochs > 0:
            raise ConfigError(f"training config: epochs must be > 0, got {self.epochs!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"training config: warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"training config: warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"training config: patience must be >= 1, got {self.patience!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"training config: precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if not self.target_modules:
            raise ConfigError("training config: target_modules is empty; name at least one module")
        if not isinstance(self.share_prefix, bool):
            raise ConfigError(f"training config: share_prefix must be true or false, "
                              f"got {self.share_prefix!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"training config: unknown field(s) {', '.join(unknown)}; "
                              f"known fields: {', '.join(sorted(known))}")
        return cls(**values)

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.target_modules), bias="none",
                          task_type="CAUSAL_LM")
