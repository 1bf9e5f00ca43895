#!/usr/bin/env bash
# The GPU check (issue 13), one prepared script of at most 10 minutes on one GPU: the quality
# recipe (multilingual-e5-small) fine-tuned in bf16 on UIT-ViSFD and MAMS-ACSA; test F1, fit
# time, training comments/s, peak GPU memory -> $OUT (else benchmarks/results)/gpu_check.{md,json}.
#
# The GPU machine reaches no network: first, here, `python -m benchmarks.gpu_prepare` writes .gpu/
# (the data, the converted e5 folder, wheels); carry .gpu with the working tree, then run there:
#   bash benchmarks/gpu_check.sh [--epochs N]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .gpu/whl ]; then
    echo "error: .gpu/ not found: run python -m benchmarks.gpu_prepare here first" >&2
    exit 2
fi
# python3 there holds torch, lightning, transformers and torchmetrics; the rest travels in .gpu/whl.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .gpu/whl/*
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export ABSA_DATA_DIR="$PWD/.gpu/data/uit-visfd" ABSA_MAMS_DIR="$PWD/.gpu/data/mams-acsa"
export ABSA_CACHE_DIR="$PWD/.gpu/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m benchmarks.gpu_check --out "${OUT:-benchmarks/results}" "$@"
