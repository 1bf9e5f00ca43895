"""Checkpoints that survive a kill at any moment, carry the random state, and resume a run.

- `AtomicCheckpointIO` writes each checkpoint beside its target and renames it into place.
- `RandomStateCheckpoint` saves the random generators' states, so a resumed run draws what the
  uninterrupted run drew: the same shuffles and dropout masks.
- `resume_checkpoint` picks the checkpoint a run restarts from (`resume=auto`).
- `read_checkpoint` loads one to predict or evaluate with: tensors and plain data only (no
  pickled code), the preprocessing checked against the project's own functions.

Kept beside Lightning's own: its `_atomic_save` is not atomic across file systems (below), it
restores no random state, and its `ckpt_path="last"` ignores the SLURM hpc checkpoints while its
SLURM auto-resume ignores `last.ckpt`: `resume_checkpoint` takes the newer of the two.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from absa_lightning.data.preprocess import preprocess_spec
from absa_lightning.errors import AbsaUserError
from absa_lightning.files import atomic_open

__all__ = ["AtomicCheckpointIO", "RandomStateCheckpoint", "read_checkpoint", "resume_checkpoint"]

Resume = Literal["auto", "never"]
RESUME_CHOICES = ("auto", "never")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, flush it to disk, rename it over the target.

    A process killed at any moment (SIGKILL, a lost node) leaves the previous checkpoint or the
    new one, never a truncated one: the rename is atomic within a file system, and the fsyncs
    make the new file and its name durable before and after it. Lightning's own `_atomic_save`
    writes into the system temporary folder and moves the file: across file systems (node-local
    /tmp, run folders on a shared one, as clusters are laid out) that move is a copy into the
    target, which a kill truncates. For local and mounted file systems, not object stores.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "wb") as f:
            torch.save(checkpoint, f)


class RandomStateCheckpoint(Callback):
    """Saves the states of Python's, NumPy's and torch's generators in checkpoints.

    Lightning restores weights, optimizer, scheduler, loops and callbacks, but not the random
    generators: a resumed run would draw other shuffles and dropout masks than the uninterrupted
    one. The states are taken when the checkpoint is written and restored when a fit resumes
    from it; on a GPU, that of the process's own device. In DDP, Lightning writes rank 0's
    checkpoint, so every process restores rank 0's states (as `seed_everything` gives every
    process the same seed). Stored as tensors and Python numbers, so checkpoints still load
    with `torch.load(weights_only=True)`.
    """

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.device = trainer.strategy.root_device  # before a checkpoint is restored

    def state_dict(self) -> dict[str, Any]:
        kind, keys, *rest = np.random.get_state()
        on_gpu = self.device.type == "cuda"
        return {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), *rest],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if on_gpu else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, *rest = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state_dict["torch"])
        if self.device.type == "cuda" and state_dict["cuda"] is not None:
            torch.cuda.set_rng_state(state_dict["cuda"], self.device)


def resume_checkpoint(run_dir: str | Path, ckpt_path: str | None, resume: Resume) -> str | None:
    """The checkpoint `trainer.fit` starts from.

    `ckpt_path` when given (a file, or Lightning's `last`/`hpc`). Else, with `resume=auto`, the
    newest checkpoint the run folder holds: its `last*.ckpt`, or the `hpc_ckpt_*.ckpt` that
    Lightning's SLURM environment writes when the job is told to stop (a requeued job runs again
    in the same folder). Else none: a fresh start.
    """
    if resume not in RESUME_CHOICES:
        raise ValueError(f"resume must be one of {list(RESUME_CHOICES)}, got {resume!r}")
    if ckpt_path is not None and Path(ckpt_path).is_file() and not zipfile.is_zipfile(ckpt_path):
        raise AbsaUserError(  # torch.save writes a zip archive: a cut one has no directory
            "not a readable checkpoint, cut off or of another kind",
            f"ckpt_path={ckpt_path}",
            "copy the file again, or resume from another checkpoint of the run",
        )
    if ckpt_path is not None or resume == "never":
        return ckpt_path
    run_dir = Path(run_dir)
    found = [*run_dir.glob("**/last*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint of `train.py`, to rebuild a trained module from.

    `weights_only`: unpickling builds tensors and plain containers, nothing else. Of what the
    checkpoint names, only `hyper_parameters.preprocess` picks code to run later: it must be one
    of `absa_lightning.data.preprocess.PREPROCESSORS` (else an error naming the file and field).
    A cut-off or foreign file is an `AbsaUserError` that names it.
    """
    path = Path(path)
    if not path.is_file():
        raise AbsaUserError("no such checkpoint file", str(path), "check the path (ckpt=)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AbsaUserError(
            f"not a readable checkpoint, cut off or of another kind ({reason})",
            str(path),
            "copy the file again, or use another checkpoint of the run (last.ckpt)",
        ) from None
    required = ("state_dict", "hyper_parameters", "encoder_spec")
    if not isinstance(checkpoint, dict) or not all(k in checkpoint for k in required):
        raise AbsaUserError(
            f"not a checkpoint of train.py (it needs {list(required)})",
            str(path),
            "give a .ckpt from a run's checkpoints/ folder",
        )
    settings = checkpoint["hyper_parameters"]
    settings["preprocess"] = preprocess_spec(
        settings.get("preprocess"), f"{path}: field 'hyper_parameters.preprocess'"
    )
    return checkpoint
