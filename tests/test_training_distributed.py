"""Data-parallel training: two gloo processes under torchrun match one process.

Both runs see the same global batch per step (one process: 2 micro-batches accumulated; two
processes: one micro-batch each), so their LoRA weights must agree up to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from appliance.models import folder_digest  # noqa: E402
from appliance.workspace import Workspace  # noqa: E402

from tests.test_training_loop import save_tiny_gemma, write_dataset  # noqa: E402

ARGUMENTS = ["--base", "{base}", "--dataset", "ds-1", "--lora-r", "4", "--lora-dropout", "0",
             "--batch-size", "3", "--max-steps", "4", "--eval-steps", "2", "--lr", "5e-3",
             "--warmup-steps", "1", "--seed", "3", "--precision", "fp32"]


def run_training(home: Path, base: Path, processes: int) -> dict:
    arguments = [a.format(base=base) for a in ARGUMENTS]
    environment = {**os.environ, "RECKON_HOME": str(home), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "appliance.training", *arguments, "--grad-accum", "2"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "appliance.training", *arguments,
                   "--grad-accum", "1"]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True,
                               timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert completed.returncode == 0, completed.stderr[-4000:]
    candidates = list((home / "artifacts" / "candidates").iterdir())
    assert len(candidates) == 1, "only rank 0 may create the candidate"
    record = json.loads((candidates[0] / "candidate.json").read_text())
    record["weights"] = load_file(str(candidates[0] / "checkpoint" / "trainable.safetensors"))
    return record


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    base = save_tiny_gemma(tmp_path / "base")
    homes = {}
    for processes in (1, 2):
        home = tmp_path / f"ws{processes}"
        write_dataset(Workspace.resolve(home), "ds-1", folder_digest(base), train=22, validation=5)
        homes[processes] = home

    single = run_training(homes[1], base, 1)
    double = run_training(homes[2], base, 2)

    assert single["metrics"]["world_size"] == 1
    assert double["metrics"]["world_size"] == 2
    assert double["metrics"]["steps"] == single["metrics"]["steps"] == 4
    assert double["metrics"]["tokens_seen"] == single["metrics"]["tokens_seen"]
    assert double["metrics"]["final_loss"] == pytest.approx(single["metrics"]["final_loss"], rel=1e-5)
    assert double["metrics"]["best_val_loss"] == pytest.approx(single["metrics"]["best_val_loss"], rel=1e-5)
    for name, value in single["weights"].items():
        assert torch.allclose(double["weights"][name], value, rtol=1e-4, atol=1e-6), name
    assert any(value.abs().sum() > 0 for name, value in single["weights"].items() if "lora_B" in name)
