#!/usr/bin/env bash
# The H200 run of bench/gpu_train.py (docs/benchmarks.md, "GPU throughput").
#
# Runs on the device machine, from the repository root, as the device tool's command. The
# machine reaches no registry, so bitsandbytes (QLoRA NF4; not in its image) travels as a
# wheel. Here, once (wheels are never committed; /.whl/ is git-ignored):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
#
# (43 MB; torch, numpy and packaging, its requirements, are in the image.) Then two calls
# back to back, so the machine stays warm, each well inside a call's 10 minutes (planned:
# about 5 minutes each; a session has 15 minutes of device time, start-up included):
#
#   run(command="bash bench/run_gpu.sh --shapes tinyllama-1.1b,gemma-2-2b", carry=[".whl"], timeout_s=600)
#   run(command="bash bench/run_gpu.sh --shapes mistral-7b --no-compile", carry=[".whl"], timeout_s=600)
#
# (Mistral's targets are QLoRA and memory ones, eager; drop --no-compile when time allows,
# it adds the bf16 compiled variants and about a minute and a half of compilation.)
#
# Each returns $OUT/gpu.json, gpu_train.log and nvidia-smi.csv. Merge the two JSONs here:
#
#   .venv/bin/python bench/gpu_train.py --merge first/gpu.json second/gpu.json \
#       --out docs/benchmarks/gpu.json
#
# Extra arguments go to bench/gpu_train.py (--steps, --warmup, --gemma-flex, --no-compile).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-/tmp/crma-gpu-out}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv > "$OUT_DIR/nvidia-smi.csv" 2>&1 || true
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" \
  || echo "bitsandbytes not importable: the QLoRA variants will be reported as skipped"
# Under the call's 600 s, so the JSON written after each phase comes back even if it runs long.
timeout "${BENCH_TIMEOUT:-560}" python3 bench/gpu_train.py --device cuda \
  --out "$OUT_DIR/gpu.json" "$@" 2>&1 | tee "$OUT_DIR/gpu_train.log"
