"""Speed of the default recipe: each comparison is a ratio measured in one process, so that the
machine's noise cancels, on the same training batches of UIT-ViSFD.

- Lightning's training step (`Trainer.fit`, as `train.py` configures it, without validation or
  checkpoints) against a bare PyTorch loop: same model, batches, optimizer, schedule and clipping.
- The full model (aspect attention, both heads, focal + SupCon) against the same encoder with
  mean pooling, one linear head and cross-entropy: the cost of what this project adds.
- Length-bucketed batches padded to their longest comment against random batches padded to
  `max_length` (and, for reference, random batches padded to their longest).
- Achieved training FLOP/s against this CPU's float32 matmul peak, measured in the same process.
- Inference comments per second at batch 64 (`AspectSentimentPredictor.predict`).
- Peak resident memory of training and of inference, each in a process of its own.

Each timed run starts from the same weights and is repeated `rounds` times, interleaved with the
run it is compared to; the fastest of each is kept (the least disturbed by other work).

    python -m benchmarks.speed --data-dir ../shared/data/uit-visfd [--quick]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader

from absa_lightning.config import CONF_DIR
from absa_lightning.module import AspectSentimentModule
from absa_lightning.predictor import AspectSentimentPredictor
from absa_lightning.train import build
from benchmarks.results import Section, Target, load_settings, section_markdown, targets_table

Batch = dict[str, torch.Tensor]


def default_recipe(data_dir: Path, overrides: Sequence[str] = ()):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train", overrides=[f"data.root={data_dir}", "output_dir=unused", *overrides]
        )


def first_batches(loader: DataLoader, n: int) -> list[Batch]:
    return [batch for _, batch in zip(range(n), loader, strict=False)]


class PlainHeadNet(nn.Module):
    """The encoder, mean pooling over the comment's tokens, one linear layer to every aspect's
    classes: the baseline against which the project's additions are costed."""

    def __init__(self, encoder: nn.Module, num_aspects: int, num_classes: int):
        super().__init__()
        self.encoder, self.num_aspects, self.num_classes = encoder, num_aspects, num_classes
        self.head = nn.Linear(encoder.config.hidden_size, num_aspects * num_classes)

    def loss(self, batch: Batch) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        tokens = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        pooled = (tokens * mask).sum(1) / mask.sum(1)
        logits = self.head(pooled).view(-1, self.num_aspects, self.num_classes)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())


def bare_loop(
    model: nn.Module, loss_fn: Callable[[Batch], torch.Tensor], optimization, batches, clip: float
) -> float:
    """Samples a second of a plain PyTorch training loop; the first batch is a warm-up."""
    optimizer, scheduler = optimization
    model.train()

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()

    step(batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return sum(len(b["labels"]) for b in batches[1:]) / (time.perf_counter() - start)


def module_loss(module: AspectSentimentModule) -> Callable[[Batch], torch.Tensor]:
    return lambda batch: module._losses(batch)[1]["loss"]


def module_optimization(module: AspectSentimentModule, total_steps: int):
    config = module.optimization(total_steps)
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


class StepClock(L.Callback):
    """Times the training steps after the first (a warm-up), as `bare_loop` does."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.samples = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 1:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= 1:
            self.samples += len(batch["labels"])
            self.end = time.perf_counter()


def lightning_loop(cfg, module: AspectSentimentModule, batches: list[Batch]) -> float:
    """Samples a second of `Trainer.fit` as train.py configures it: the trainer config (precision,
    clipping, deterministic, logging every step into the epoch means), the CSV logger."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(cfg, clock, tmp, len(batches))
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return clock.samples / (clock.end - clock.start)


def _trainer(cfg, clock: StepClock, log_dir: str, steps: int) -> L.Trainer:
    options = {k: v for k, v in cfg.trainer.items() if k not in ("_target_", "plugins")}
    options.update(
        default_root_dir=log_dir,
        max_epochs=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**options, callbacks=[clock], logger=L.pytorch.loggers.CSVLogger(log_dir))


def encoder_training_flops(config, attention_mask: torch.Tensor) -> float:
    """Forward + backward FLOPs of a BERT-style encoder on a batch's real tokens.

    Per layer and comment of n tokens: the Q, K, V, output and two feed-forward projections
    (2n(4d^2 + 2d*ff)), and the attention scores and weighted sum (2 * 2n^2 d); the backward pass
    costs twice the forward. Embedding look-ups, norms and activations are left out.
    """
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n = attention_mask.sum(dim=1).double()
    forward = layers * (2 * n * (4 * d * d + 2 * d * ff) + 4 * n * n * d).sum()
    return float(3 * forward)


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The best of `rounds` alternations of each run (samples a second; higher is better)."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rates[name].append(run())
    return {name: max(values) for name, values in rates.items()}


def training_measurements(data_dir: Path, steps: int, rounds: int) -> dict:
    cfg = default_recipe(data_dir)
    L.seed_everything(cfg.seed)
    torch.use_deterministic_algorithms(cfg.trainer.deterministic)  # as the Trainer will set it
    datamodule, module = build(cfg)
    initial = copy.deepcopy(module.state_dict())
    clip = cfg.trainer.gradient_clip_val

    bucketed = first_batches(datamodule.train_dataloader(), steps)
    # Random batches (pools of one batch), then the same draw padded to max_length.
    datamodule.bucket_batches = 1
    draw = torch.seed()
    random_longest = first_batches(datamodule.train_dataloader(), steps)
    torch.manual_seed(draw)
    datamodule.pad_to_max_length = True
    fixed = first_batches(datamodule.train_dataloader(), steps)

    def full(batches: list[Batch]) -> Callable[[], float]:
        def run() -> float:
            module.load_state_dict(initial)
            return bare_loop(
                module, module_loss(module), module_optimization(module, steps), batches, clip
            )

        return run

    def lightning() -> float:
        module.load_state_dict(initial)
        return lightning_loop(cfg, module, bucketed)

    plain = PlainHeadNet(copy.deepcopy(module.net.encoder), len(datamodule.aspects), 4)
    plain_initial = copy.deepcopy(plain.state_dict())

    def plain_run() -> float:
        plain.load_state_dict(plain_initial)
        optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return bare_loop(plain, plain.loss, (optimizer, scheduler), bucketed, clip)

    loop = interleaved({"bare": full(bucketed), "lightning": lightning}, rounds)
    heads = interleaved({"full": full(bucketed), "plain": plain_run}, rounds)
    padding = interleaved(
        {
            "bucketed": full(bucketed),
            "fixed": full(fixed),
            "random_longest": full(random_longest),
        },
        rounds,
    )

    encoder_config = module.net.encoder.config
    flops_per_sample = sum(
        encoder_training_flops(encoder_config, b["attention_mask"]) for b in bucketed[1:]
    ) / sum(len(b["labels"]) for b in bucketed[1:])
    peak = matmul_peak_flops()
    tokens = [b["attention_mask"] for b in bucketed]
    return {
        "threads": torch.get_num_threads(),
        "batch_size": cfg.data.batch_size,
        "steps": steps,
        "rounds": rounds,
        "bare_samples_per_s": loop["bare"],
        "lightning_samples_per_s": loop["lightning"],
        "full_samples_per_s": heads["full"],
        "plain_samples_per_s": heads["plain"],
        "bucketed_samples_per_s": padding["bucketed"],
        "fixed_samples_per_s": padding["fixed"],
        "random_longest_samples_per_s": padding["random_longest"],
        "real_tokens_per_comment": float(
            sum(m.sum() for m in tokens) / sum(len(m) for m in tokens)
        ),
        "padded_tokens_per_comment": {
            name: statistics.fmean(b["input_ids"].shape[1] for b in batches)
            for name, batches in (
                ("bucketed", bucketed),
                ("random_longest", random_longest),
                ("fixed", fixed),
            )
        },
        "achieved_flops": flops_per_sample * padding["bucketed"],
        "matmul_peak_flops": peak,
    }


def training_memory(data_dir: Path, steps: int) -> dict:
    """Peak RSS of the default recipe's Lightning training over `steps` batches, alone."""
    cfg = default_recipe(data_dir)
    L.seed_everything(cfg.seed)
    datamodule, module = build(cfg)
    lightning_loop(cfg, module, first_batches(datamodule.train_dataloader(), steps))
    return {"training_peak_rss_mb": peak_rss_mb()}


def inference_measurements(data_dir: Path, repeats: int) -> dict:
    """Comments a second of the predictor at batch 64 over the test split, and peak RSS."""
    cfg = default_recipe(data_dir)
    L.seed_everything(cfg.seed)
    datamodule, module = build(cfg)
    datamodule.setup("test")
    texts = datamodule.datasets["test"].texts
    predictor = AspectSentimentPredictor(
        module.net,
        module.tokenizer,
        datamodule.aspects,
        datamodule.polarities,
        max_length=cfg.data.max_length,
        batch_size=64,
        device="cpu",
    )
    predictor.predict(texts[:64])
    seconds = min(_timed(lambda: predictor.predict(texts)) for _ in range(repeats))
    return {
        "inference_comments_per_s": len(texts) / seconds,
        "inference_comments": len(texts),
        "inference_peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def in_child(fn: Callable[..., dict], *args) -> dict:
    """`fn(*args)` in a fresh process, so that its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, args)


def run(data_dir: Path, quick: bool) -> Section:
    steps, rounds = (12, 2) if quick else (40, 3)
    m = {
        **in_child(training_measurements, data_dir, steps, rounds),
        **in_child(training_memory, data_dir, steps),
        **in_child(inference_measurements, data_dir, 1 if quick else 3),
    }
    ratios = {
        "lightning_vs_bare": m["lightning_samples_per_s"] / m["bare_samples_per_s"],
        "full_vs_plain": m["full_samples_per_s"] / m["plain_samples_per_s"],
        "bucketed_vs_fixed": m["bucketed_samples_per_s"] / m["fixed_samples_per_s"],
        "flops_vs_peak": m["achieved_flops"] / m["matmul_peak_flops"],
    }
    padded = m["padded_tokens_per_comment"]
    rows = [
        _row(
            "Lightning step / bare loop",
            ratios["lightning_vs_bare"],
            f"{m['lightning_samples_per_s']:.0f} / {m['bare_samples_per_s']:.0f} samples/s",
        ),
        _row(
            "full model / plain head + CE",
            ratios["full_vs_plain"],
            f"{m['full_samples_per_s']:.0f} / {m['plain_samples_per_s']:.0f} samples/s",
        ),
        _row(
            "bucketed, pad to longest / random, pad to max_length",
            ratios["bucketed_vs_fixed"],
            f"{m['bucketed_samples_per_s']:.0f} / {m['fixed_samples_per_s']:.0f} samples/s; "
            f"{padded['bucketed']:.0f} / {padded['fixed']:.0f} tokens a row "
            f"({m['real_tokens_per_comment']:.1f} real)",
        ),
        _row(
            "random, pad to longest / random, pad to max_length",
            m["random_longest_samples_per_s"] / m["fixed_samples_per_s"],
            f"{m['random_longest_samples_per_s']:.0f} samples/s; "
            f"{padded['random_longest']:.0f} tokens a row (before bucketing)",
        ),
        _row(
            "training FLOP/s / float32 matmul peak",
            ratios["flops_vs_peak"],
            f"{m['achieved_flops'] / 1e9:.1f} / {m['matmul_peak_flops'] / 1e9:.1f} GFLOP/s",
        ),
        _row("inference, batch 64", None, f"{m['inference_comments_per_s']:.0f} comments/s"),
        _row("peak RSS, training", None, f"{m['training_peak_rss_mb']:.0f} MB"),
        _row("peak RSS, inference", None, f"{m['inference_peak_rss_mb']:.0f} MB"),
    ]
    targets = [
        Target(f"speed: {name}", ratios[name], ">=", target)
        for name, target in load_settings(quick).targets.speed.items()
    ]
    notes = [
        f"{m['threads']} torch threads; {steps} training batches of the default recipe "
        f"(batch {m['batch_size']}), best of {rounds} interleaved rounds; "
        "the first batch of each run is a warm-up."
    ]
    return Section("Speed", ["measure", "ratio", "detail"], rows, targets, notes, m)


def _row(measure: str, ratio: float | None, detail: str) -> dict:
    return {"measure": measure, "ratio": "" if ratio is None else f"{ratio:.2f}", "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    section = run(args.data_dir, args.quick)
    print(section_markdown(section))
    print(targets_table(section.targets))


if __name__ == "__main__":
    main()
