#!/usr/bin/env bash
# Every GPU check of issue 31 in one call on a lent GPU machine (its device time is short: about
# 6-8 minutes of the 10 a call may take). On the machine this checkout is on, first:
#
#     bash benchmarks/gpu_session.sh --fetch-wheels     # the packages the GPU image lacks, into .whl/
#
# then one device call from the repository root, carrying .whl (ignored by git via .git/info/exclude):
#
#     command: bash benchmarks/gpu_session.sh    carry: [".whl"]    timeout_s: 580
#
# It runs, in order, each step's output saved under $OUT (what comes back):
#   1. the GPU tests (float32 exact whatever the process set, TF32's distance, CUDA graphs against
#      naive over images, batches, short chunks and drill-downs) and the other CUDA tests;
#   2. a quick CUDA profile at the GPU's chunk sizes (8-512 positions) with resnet18's and vgg16's layers;
#   3. benchmarks/gpu_steps.py: eager and CUDA graphs, float32 and TF32, per model and mode;
#   4. the GPU suite (8 models, captum in the same run, float32) with CUDA graphs, rewriting the
#      GPU section of docs/benchmarks.md, docs/suite_cuda_stride8.csv and its plot; again without
#      graphs if that run fails.
# Copy the returned docs/ files over this checkout's, and the gpu-steps table into docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS="sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 platformdirs==4.14.9 captum==0.9.0"
if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    # The GPU image runs Python 3.12; these are pure Python or manylinux wheels.
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
fi

OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD:$PWD/benchmarks" PYTHONUNBUFFERED=1 HYINF_DAEMON=0
export HYINF_DB="/tmp/hyinf-gpu.db" HYINF_CACHE_DIR="/tmp/hyinf-gpu-cache"
start=$SECONDS
step() { echo "== $1 at $((SECONDS - start)) s"; }

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch; print(torch.__version__)"; } \
    2>&1 | tee "$OUT/machine.txt"

step "tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py tests/test_budget.py tests/test_model_cache.py \
    2>&1 | tee "$OUT/tests.log"

step "profile"
timeout 150 python3 -m hyinf.cli profile --device cuda --quick --configs 60 --model torchvision:resnet18 \
    --model torchvision:vgg16 2>&1 | tail -20 | tee "$OUT/profile.log"

step "steps"
(cd benchmarks && timeout 150 python3 gpu_steps.py --repeats 3 --write "$OUT/gpu_steps.md") 2>&1 | tail -40

step "suite"
suite() { (cd benchmarks && timeout "$1" python3 suite.py --device cuda --repeats 3 --systems captum naive full incremental hybrid \
    --write ../docs/benchmarks.md "${@:2}") 2>&1 | tee "$OUT/suite.log" | grep -v " round " ; }
suite 240 --cuda-graphs || suite 150
cp docs/benchmarks.md docs/suite_cuda_stride8.csv docs/img/suite_cuda_stride8.png "$OUT/" 2>/dev/null
step "done"
