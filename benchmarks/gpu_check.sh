#!/usr/bin/env bash
# The GPU check (issue 13), one prepared script of at most 10 minutes on one GPU, in two parts:
# 1. the quality recipe (multilingual-e5-small, all 12 layers) fine-tuned in bf16 on UIT-ViSFD and
#    MAMS-ACSA, one after the other: test F1, fit time, training comments/s, peak GPU memory
#    -> gpu_check.{md,json};
# 2. in the time left, the bench's loss rows (default, CE only, warm start) over its 3 seeds on
#    both datasets and the default on the 1k/3k subsets, all at once on the GPU (one small model
#    leaves it mostly idle) -> bench-gpu.{md,json}; bench_runs.tgz holds each finished run's
#    metrics and log, also when time runs out first.
# Both into $OUT (else benchmarks/results).
#
# The GPU machine reaches no network: first, here, `python -m benchmarks.gpu_prepare` writes .gpu/
# (the data, the converted e5 folder, wheels); carry .gpu with the working tree, then run there:
#   bash benchmarks/gpu_check.sh [--epochs N]      # N: part 1's epochs
# GPU_CHECK_PART1=0 skips part 1 (measured at c9e7f41); GPU_BENCH_ROWS, GPU_BENCH_DATASETS and
# GPU_BENCH_JOBS choose part 2's bench rows, datasets and runs at once, e.g. the rows not yet
# measured over 3 seeds: GPU_CHECK_PART1=0 GPU_BENCH_ROWS=focal,focal_contrastive,balancer,e5_12
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .gpu/whl ]; then
    echo "error: .gpu/ not found: run python -m benchmarks.gpu_prepare here first" >&2
    exit 2
fi
limit=${GPU_CHECK_SECONDS:-560}  # both parts; part 1 may take half
out=${OUT:-benchmarks/results}
# python3 there holds torch, lightning, transformers and torchmetrics; the rest travels in .gpu/whl.
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export ABSA_DATA_DIR="$PWD/.gpu/data/uit-visfd" ABSA_MAMS_DIR="$PWD/.gpu/data/mams-acsa"
export ABSA_CACHE_DIR="$PWD/.gpu/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ "${GPU_CHECK_PART1:-1}" != 0 ]; then
    timeout $((limit / 2)) python3 -m benchmarks.gpu_check --out "$out" "$@" ||
        echo "part 1 ended with status $? (124: out of time)"
fi

rows=${GPU_BENCH_ROWS:-default,ce,warm_start}
datasets=${GPU_BENCH_DATASETS:-visfd,mams,visfd_1k,visfd_3k}
OMP_NUM_THREADS=1 timeout $((limit - SECONDS)) python3 -m benchmarks.bench --only quality \
    --datasets "$datasets" --rows "$rows" --override trainer=gpu --jobs "${GPU_BENCH_JOBS:-24}" \
    --out "$out" ||
    echo "part 2 ended with status $? (124: out of time)"
for suffix in md json; do
    if [ -f "$out/bench-partial.$suffix" ]; then mv "$out/bench-partial.$suffix" "$out/bench-gpu.$suffix"; fi
done
find outputs/bench -name metrics.json -o -name bench_stamp.json -o -name loss_dynamics.csv \
    -o -name bench.log |
    tar czf "$out/bench_runs.tgz" -T -
