"""What every Hydra entry point needs: where conf/ is, and the resolvers conf/ uses in `${...}`
interpolations (registered when this module is imported)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONF_DIR", "fused_for", "precision_for"]

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the repository's conf/


def precision_for(accelerator: str, accelerated: str) -> str:
    """`accelerated` (e.g. bf16-mixed) on GPUs, 32-true on CPUs.

    So that `trainer=ddp trainer.accelerator=cpu` (DDP in tests) does not inherit the GPU's mixed
    precision: on CPUs bf16 autocast is slower and less precise, and has nothing to save.
    """
    return "32-true" if accelerator == "cpu" else accelerated


def fused_for(precision: str) -> bool:
    """A fused optimizer step (one kernel for all parameters) in full precision only: under mixed
    precision Lightning refuses gradient clipping with an optimizer that unscales gradients itself
    (torch then picks its multi-tensor step on GPUs)."""
    return "mixed" not in str(precision)


OmegaConf.register_new_resolver("precision_for", precision_for, replace=True)
OmegaConf.register_new_resolver("fused_for", fused_for, replace=True)
