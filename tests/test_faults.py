"""Faults: a run killed at any moment resumes as if never stopped; a non-finite loss stops a run."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import NO_DIAGNOSTICS, QUIET, REPO, TINY, compose_train

from absa_lightning.checkpointing import AtomicCheckpointIO, resume_checkpoint
from absa_lightning.losses import SupConLoss
from absa_lightning.train import train

STEPS_PER_EPOCH = 32  # 128 training comments, batches of 4


def _overrides(data: Path) -> list[str]:
    return [
        *TINY,
        *QUIET,
        f"data.root={data}",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "+logger.csv.flush_logs_every_n_steps=1",  # metrics.csv shows each step as it ends
    ]


def _train_command(data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *_overrides(data), f"hydra.run.dir={run_dir}"]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _last_logged_step(metrics_csv: Path) -> int:
    """The highest step in metrics.csv so far (-1 before the first row); it is being written."""
    try:
        with open(metrics_csv, newline="") as f:
            return max(
                (int(row["step"]) for row in csv.DictReader(f) if row.get("step")), default=-1
            )
    except (FileNotFoundError, ValueError):  # not there yet, or a row half written
        return -1


def _assert_identical(actual: object, expected: object, where: str) -> None:
    """Equal bit for bit, through nested dicts, lists and tuples of tensors and plain values."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_identical(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_identical(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def _tracking(state: dict) -> dict:
    """A ModelCheckpoint's state with file names for paths, which name the run folder.

    Without `current_score`: the score of the latest save in this process, which Lightning
    does not restore.
    """
    tracking = {k: v for k, v in state.items() if k not in ("current_score", "dirpath")}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        tracking[key] = Path(tracking[key]).name
    tracking["best_k_models"] = {Path(p).name: v for p, v in tracking["best_k_models"].items()}
    return tracking


def _kill_mid_epoch(command: list[str], run_dir: Path, step: int) -> None:
    """Start a run and SIGKILL it once metrics.csv shows `step`."""
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while _last_logged_step(run_dir / "metrics.csv") < step:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach the step to kill it at"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(small_visfd: Path, tmp_path: Path) -> None:
    """SIGKILL in the middle of epoch 1, rerun the same command: the same run, bit for bit.

    Deterministic CPU training, a fixed seed, and a resume that restores weights, optimizer,
    scheduler, loops, early stopping, best-checkpoint tracking and the random generators: every
    metric and every tensor of the final checkpoint equals the uninterrupted run's exactly.
    """
    # The run as it goes uninterrupted, in this process (the same as train.py's: test_train).
    train(compose_train(_overrides(small_visfd), tmp_path / "uninterrupted"))

    run_dir = tmp_path / "killed"
    command = _train_command(small_visfd, run_dir)
    _kill_mid_epoch(command, run_dir, step=STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2)
    at_kill = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert at_kill["global_step"] == STEPS_PER_EPOCH  # end of epoch 0: epoch 1 was cut short
    assert not (run_dir / "metrics.json").exists()
    _run(command)  # resume=auto: the run folder's last.ckpt

    expected, resumed = (
        json.loads((tmp_path / name / "metrics.json").read_text())
        for name in ("uninterrupted", "killed")
    )
    for key in ("test", "best_val", "final_losses", "per_aspect"):
        assert resumed[key] == expected[key], key
    assert Path(resumed["best_checkpoint"]).name == Path(expected["best_checkpoint"]).name

    expected, resumed = (
        torch.load(tmp_path / name / "checkpoints/last.ckpt", weights_only=True)
        for name in ("uninterrupted", "killed")
    )
    for key in ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers"):
        _assert_identical(resumed[key], expected[key], key)
    assert set(resumed["callbacks"]) == set(expected["callbacks"])
    for name, state in expected["callbacks"].items():
        resumed_state = resumed["callbacks"][name]
        if name.startswith("ModelCheckpoint"):
            state, resumed_state = _tracking(state), _tracking(resumed_state)
        _assert_identical(resumed_state, state, name)


def _write_checkpoints_forever(
    target: Path, tensor: torch.Tensor, written: multiprocessing.SimpleQueue
) -> None:
    io = AtomicCheckpointIO()
    for version in range(1, 10**6):
        io.save_checkpoint({"version": version, "tensor": tensor}, target)
        written.put(version)


def test_atomic_checkpoint_survives_sigkill_mid_write(tmp_path: Path) -> None:
    """A writer killed at moments spread over its writes never leaves a truncated checkpoint."""
    target = tmp_path / "last.ckpt"
    tensor = torch.randn(8_000_000)  # 32 MB a write
    # fork: the writer has the modules already imported. It only serialises and writes: no
    # torch compute, whose thread pool may not survive a fork of a process that used it.
    context = multiprocessing.get_context("fork")
    for delay in (0.0, 0.03, 0.07, 0.11, 0.17):
        written = context.SimpleQueue()
        args = (target, tensor, written)
        writer = context.Process(target=_write_checkpoints_forever, args=args)
        writer.start()
        written.get()  # one version written: the next write is under way
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert torch.load(target, weights_only=True)["version"] >= 1  # loads: whole
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]


def test_atomic_checkpoint_failed_write_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 1}, target)

    def disk_full(obj: object, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"version": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left


def test_resume_checkpoint_picks_the_newest_of_the_run_folder(tmp_path: Path) -> None:
    assert resume_checkpoint(tmp_path, None, "auto") is None  # a new run folder: fresh start
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints/last.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "checkpoints/epoch_00.ckpt").touch()
    (tmp_path / "checkpoints/.last.ckpt.0a1b.partial").touch()  # a killed write: never picked
    for path, mtime in ((last, 1_000), (hpc, 2_000)):
        path.touch()
        os.utime(path, (mtime, mtime))
    assert resume_checkpoint(tmp_path, None, "auto") == str(hpc)  # written at a SLURM signal
    os.utime(last, (3_000, 3_000))
    assert resume_checkpoint(tmp_path, None, "auto") == str(last)
    assert resume_checkpoint(tmp_path, None, "never") is None
    assert resume_checkpoint(tmp_path, "last", "auto") == "last"  # Lightning resolves it
    with pytest.raises(ValueError, match="resume must be one of"):
        resume_checkpoint(tmp_path, None, "always")


def test_non_finite_loss_stops_the_run_naming_loss_step_and_batch(
    small_visfd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = SupConLoss.forward
    calls = {"train": 0}

    def nan_on_third_training_batch(self, embeddings, labels):
        loss = forward(self, embeddings, labels)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(SupConLoss, "forward", nan_on_third_training_batch)
    cfg = compose_train(
        [
            *TINY,
            *QUIET,
            *NO_DIAGNOSTICS,
            f"data.root={small_visfd}",
            "data.batch_size=16",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    with pytest.raises(FloatingPointError) as error:
        train(cfg)
    message = str(error.value)
    assert message.startswith(
        "train/contrastive_loss is nan, train/loss is nan at global step 2 (epoch 0, batch 2); "
        "batch comment indices: ["
    )
    indices = json.loads(message.split("indices: ")[1])
    assert len(indices) == 16
    assert set(indices) <= set(range(128))
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))  # stopped before the epoch's checkpoint


def test_check_finite_false_trains_on(
    small_visfd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = SupConLoss.forward
    monkeypatch.setattr(
        SupConLoss, "forward", lambda self, e, y: forward(self, e, y) * float("nan")
    )
    overrides = [*TINY, *QUIET, f"data.root={small_visfd}", "debug=fdr"]
    metrics = train(compose_train([*overrides, "loss.check_finite=false"], tmp_path))
    assert metrics["test"]["test/contrastive_loss"] != metrics["test"]["test/contrastive_loss"]
