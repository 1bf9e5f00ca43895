"""Several processes: the contrastive loss across DDP processes, DDP training, SLURM sweeps."""

from __future__ import annotations

import csv
import gc
import json
import os
import signal
import traceback
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import CONF_DIR, NO_DIAGNOSTICS, QUIET, TINY
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import open_dict
from submitit.core.utils import DelayedSubmission
from submitit.slurm.slurm import SlurmJob
from test_train import check, run
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from absa_lightning.evaluate import evaluate
from absa_lightning.losses import SupConLoss

WORLD = 2
ASPECTS, DIM, FEATURES = 4, 8, 6
BATCH_SIZES = (3, 2)  # unequal, as the last batch of an epoch can be: exercises the padding


def _batches() -> list[dict[str, torch.Tensor]]:
    """Each process's batch: inputs, L2-normalised embeddings and labels, in float64."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for size in BATCH_SIZES:
        embeddings = torch.randn(size, ASPECTS, DIM, generator=gen, dtype=torch.float64)
        batches.append(
            {
                "inputs": torch.randn(size, ASPECTS, FEATURES, generator=gen, dtype=torch.float64),
                "embeddings": F.normalize(embeddings, dim=-1),
                "labels": torch.randint(0, 3, (size, ASPECTS), generator=gen),
            }
        )
    return batches


def _projection() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(FEATURES, DIM).double()


def _supcon_results(rank: int) -> tuple[dict, weakref.ref]:
    """This process's losses and gradients, and a weak reference to its DDP object.

    The DDP object (and the Reducer it holds) lives only in this frame: it must be gone before
    `destroy_process_group`, or freeing it afterwards tears down Gloo's process group from the
    Reducer's destructor, which can deadlock against Gloo's worker thread waiting for the GIL.
    """
    batch = _batches()[rank]
    loss_fn = SupConLoss(temperature=0.1, gather=True)
    embeddings = batch["embeddings"].clone().requires_grad_()
    loss = loss_fn(embeddings, batch["labels"])
    loss.backward()

    net = DistributedDataParallel(_projection())
    ddp_loss = loss_fn(F.normalize(net(batch["inputs"]), dim=-1), batch["labels"])
    ddp_loss.backward()  # DDP averages the parameter gradients over the processes
    result = {
        "loss": loss.detach(),
        "embedding_grad": embeddings.grad,
        "ddp_loss": ddp_loss.detach(),
        "param_grads": [p.grad.detach().clone() for p in net.module.parameters()],
    }
    return result, weakref.ref(net)


def _supcon_process(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result, ddp = _supcon_results(rank)
        gc.collect()  # DDP's hooks form reference cycles: freed by the collector, not at return
        result["ddp_alive_at_destroy"] = ddp() is not None
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)  # their locals hold the DDP object
        gc.collect()
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_supcon_across_two_processes_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    """Value and gradients of `gather=True` under 2 gloo processes vs 1 process, concatenated.

    What holds: each process's loss equals the single-process loss; each process's own
    embeddings get W times their single-process gradient (the collectives sum over processes);
    after DDP averages over the W processes, the parameter gradients equal the single-process
    ones.
    """
    # Forked from a server that imported this module and ran nothing (forking pytest itself, whose
    # threads have run, can hang the children): one import of torch and Lightning, not two.
    mp.get_context("forkserver").set_forkserver_preload([__name__])
    args = (str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_supcon_process, args=args, nprocs=WORLD, start_method="forkserver")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    batches = _batches()
    labels = torch.cat([b["labels"] for b in batches])
    embeddings = torch.cat([b["embeddings"] for b in batches]).requires_grad_()
    loss_fn = SupConLoss(temperature=0.1)
    expected = loss_fn(embeddings, labels)
    expected.backward()
    net = _projection()
    inputs = torch.cat([b["inputs"] for b in batches])
    expected_ddp = loss_fn(F.normalize(net(inputs), dim=-1), labels)
    expected_ddp.backward()

    local_only = loss_fn(batches[0]["embeddings"], batches[0]["labels"])
    assert not torch.isclose(local_only, expected)  # the other process's cells do matter here
    for rank, result in enumerate(results):
        assert not result["ddp_alive_at_destroy"], rank  # else Gloo can deadlock at teardown
        torch.testing.assert_close(result["loss"], expected.detach())
        torch.testing.assert_close(result["ddp_loss"], expected_ddp.detach())
        rows = slice(sum(BATCH_SIZES[:rank]), sum(BATCH_SIZES[: rank + 1]))
        torch.testing.assert_close(result["embedding_grad"], WORLD * embeddings.grad[rows])
        for grad, param in zip(result["param_grads"], net.parameters(), strict=True):
            torch.testing.assert_close(grad, param.grad)


def test_supcon_gather_is_a_no_op_in_one_process() -> None:
    batch = _batches()[0]
    gathered = SupConLoss(gather=True)(batch["embeddings"], batch["labels"])
    torch.testing.assert_close(gathered, SupConLoss()(batch["embeddings"], batch["labels"]))


def _odd_sized_copy(data: Path, folder: Path) -> Path:
    """`data` with dev and test cut to an odd number of comments.

    Split over 2 processes, Lightning's DistributedSampler would pad them with a repeated comment.
    """
    folder.mkdir()
    for name in ("Train.csv", "Dev.csv", "Test.csv"):
        with open(data / name, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        if name != "Train.csv":
            rows = rows[: len(rows) - 1 + len(rows) % 2]
        with open(folder / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_scores_each_comment_once(
    small_visfd: Path, tmp_path: Path
) -> None:
    """`trainer=ddp trainer.accelerator=cpu trainer.devices=2`, end to end through train.py.

    The test metrics in metrics.json are those of one process scoring the whole split with the
    same checkpoint (eval), written by rank 0 alone.
    """
    data = _odd_sized_copy(small_visfd, tmp_path / "data")
    run_dir = tmp_path / "run"
    check(
        run(
            "train.py",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            *TINY,
            *QUIET,
            f"data.root={data}",
            "trainer.max_epochs=2",
            f"hydra.run.dir={run_dir}",
        )
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["trainer"]["precision"] == "32-true"  # not the GPU's bf16-mixed
    rank1_log = (run_dir / "train_ddp_process_1.log").read_text()  # a second process did train
    assert "run folder" in (run_dir / "train.log").read_text()
    assert "run folder" not in rank1_log

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "eval", [f"ckpt_path={metrics['best_checkpoint']}", f"data.root={data}", *QUIET[1:]]
        )
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    one_process = evaluate(cfg)
    for key, value in one_process.items():
        if "contrastive" not in key and key != "test/loss":  # those depend on the batches
            assert metrics["test"][key] == pytest.approx(value, abs=1e-6), key
    evaluated = json.loads((tmp_path / "eval/eval_metrics.json").read_text())
    assert metrics["per_aspect"] == evaluated["per_aspect"]  # the same counts: each comment once


def test_slurm_sweep_submits_one_array_task_per_job_with_the_requeue_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hydra/launcher=slurm through the real launcher and submitit, down to the sbatch call.

    `sbatch` is a stand-in that only answers with a job id, and nothing waits for the jobs.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, body in (("sbatch", 'echo "Submitted batch job 4242"'), ("srun", "exit 1")):
        (bin_dir / command).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(SlurmJob, "results", lambda job: [f"result of {job.job_id}"])

    overrides = [
        "hydra/launcher=slurm",
        "trainer=slurm",
        "trainer.devices=8",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    sweep = [[f"loss.focal_weight={w}"] for w in (0.7, 0.8, 0.9)]
    returns = launcher.launch(sweep, initial_job_idx=0)

    assert returns == [f"result of 4242_{i}" for i in range(3)]
    (script,) = (tmp_path / "sweep").glob("**/*_submission.sh")
    flags = set(script.read_text().splitlines())
    assert {
        "#SBATCH --array=0-2%3",  # three jobs
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",  # one process per GPU
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --signal=USR1@120",  # what Lightning's SLURM environment requeues on
        "#SBATCH --time=240",
    } <= flags
    submitted = sorted((tmp_path / "sweep").glob("**/*_submitted.pkl"))
    jobs = [DelayedSubmission.load(path).args[0] for path in submitted]
    assert sorted(jobs) == sweep

    monkeypatch.undo()  # the real PATH: Lightning warns when it finds an srun it does not run under
    assert cfg.trainer.strategy == "ddp"
    # Inside the job: Lightning finds SLURM by itself and requeues on SIGUSR1.
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "n1",
    }.items():
        monkeypatch.setenv(key, value)
    trainer = instantiate(
        cfg.trainer,
        accelerator="cpu",
        precision="32-true",
        devices=1,
        num_nodes=1,
        default_root_dir=str(tmp_path),
        logger=False,
        callbacks=[],
    )
    slurm_env = trainer.strategy.cluster_environment
    assert isinstance(slurm_env, SLURMEnvironment)
    assert slurm_env.auto_requeue and slurm_env.requeue_signal == signal.SIGUSR1


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job(small_visfd: Path, tmp_path: Path) -> None:
    """hydra/launcher=submitit_local: two jobs, each in its own process, each with metrics.json;
    the sweep ends with its summary (summary.csv, .md, .png)."""
    check(
        run(
            "train.py",
            "-m",
            "hydra/launcher=submitit_local",
            "loss.focal_weight=0.7,0.9",
            *TINY,
            *QUIET,
            *NO_DIAGNOSTICS,
            f"data.root={small_visfd}",
            "debug=fdr",
            f"hydra.sweep.dir={tmp_path}",
        )
    )
    jobs = sorted(tmp_path.glob("*/metrics.json"))
    weights = {json.loads(p.read_text())["config"]["loss"]["focal_weight"] for p in jobs}
    assert weights == {0.7, 0.9}
    assert len(list(tmp_path.glob(".submitit/*/*_result.pkl"))) == 2  # ran by submitit
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(row["loss.focal_weight"] for row in table) == ["0.7", "0.9"]
    assert all(row["status"] == "ok" and row["val/pair_f1"] for row in table)
    assert float(table[0]["val/pair_f1"]) >= float(table[1]["val/pair_f1"])  # best first
    assert "Best: job" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").read_bytes().startswith(b"\x89PNG")
