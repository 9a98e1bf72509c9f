"""Training checkpoints: everything a resumed run needs to continue as if never stopped.

A checkpoint folder contains
    trainable.safetensors     the trainable (LoRA) parameters, by their model parameter name
    best.safetensors          the trainable parameters at the best validation loss, if any
    optimizer.pt              optimizer and learning-rate scheduler state dicts
    rng.pt                    torch CPU/CUDA and Python `random` generator states
    state.json                step (the data-order position), losses, early-stopping counters

The .pt files hold only tensors and plain containers and are read with
torch.load(weights_only=True), which refuses arbitrary pickled objects. A checkpoint is
written to a sibling folder and renamed into place, so a crash mid-write keeps the last one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


def trainable_state(model) -> dict:
    return {name: param.detach().clone() for name, param in model.named_parameters()
            if param.requires_grad}


def load_trainable_state(model, tensors: dict, source: str) -> None:
    import torch

    parameters = {name: param for name, param in model.named_parameters() if param.requires_grad}
    missing = sorted(set(parameters) - set(tensors))
    unexpected = sorted(set(tensors) - set(parameters))
    if missing or unexpected:
        raise ConfigError(f"{source}: trainable parameters do not match the model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}); "
                          "was it written for another base or LoRA configuration?")
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(tensors[name].to(param.device, param.dtype))


def rng_state() -> dict:
    import torch

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict,
                    best: dict | None = None) -> Path:
    """Write a checkpoint into `folder` atomically and return the folder."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in trainable_state(model).items()},
              str(staging / "trainable.safetensors"))
    if best is not None:
        save_file({k: v.contiguous().cpu() for k, v in best.items()}, str(staging / "best.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               staging / "optimizer.pt")
    torch.save(rng_state(), staging / "rng.pt")
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))

    previous = folder.with_name(folder.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        os.replace(folder, previous)
    os.replace(staging, folder)
    shutil.rmtree(previous, ignore_errors=True)
    log.info("checkpoint at step %s written to %s", state.get("step"), folder)
    return folder


def read_state(folder: Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"no checkpoint in {folder}: {STATE_FILE} is missing, so there is nothing "
                          "to resume; start a new training run instead")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: invalid JSON ({error.msg})") from None


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[dict, dict | None]:
    """Restore model, optimizer, scheduler and RNG states; return (state, best snapshot)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    state = read_state(folder)
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")),
                         str(folder / "trainable.safetensors"))
    best_path = folder / "best.safetensors"
    best = load_file(str(best_path)) if best_path.is_file() else None
    saved = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    restore_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return state, best
