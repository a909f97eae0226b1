#!/usr/bin/env bash
# The accelerator measurements of docs/benchmarks.md ("GPT-2 small on an accelerator") in one command, for a machine
# lent for minutes: the preset's train step (benchmarks/throughput.py --preset=gpt2-small) in bfloat16 with the
# preset's micro-batch, then with remat=block, then at twice the batch; each run's JSON and log under $OUT (or
# ./device_out). Nothing is fetched: the machine must already have jax with its accelerator plugin, flax, optax,
# orbax-checkpoint and absl; other missing packages travel as wheels in ./.whl (ml_collections is the one the preset
# needs beyond those; tokenizers, gensim and tensorboardX are not imported by it), installed to /tmp/site.
#
# Before, on the machine the session runs on (wheels for the device's Python, 3.12 here):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform any -d .whl ml_collections==1.1.0
# then run `bash benchmarks/device_check.sh` there carrying `.whl` (about 8 minutes on an H100 / H200; each step
# below is bounded by `timeout`, so the end of the log always comes back).
#
# Here (CPU) the same script runs the preset's CPU path: a check of the script, not a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device_out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{
  date -u
  git log -1 --format='commit %h %cd' 2>/dev/null || echo "commit (no git here)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, ml_collections; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__); print(jax.devices())"
} 2>&1 | tee "$out/environment.txt"

preset() {  # NAME SECONDS ARGS...: the preset's run with --json; the log keeps the human-readable lines too
  local name=$1 seconds=$2
  shift 2
  echo "== $name: $*" | tee -a "$out/summary.txt"
  timeout "$seconds" python3 benchmarks/throughput.py --preset=gpt2-small --json "$@" > "$out/$name.json" \
    2> "$out/$name.log"
  local code=$?
  tail -n 3 "$out/$name.log" | tee -a "$out/summary.txt"
  cat "$out/$name.json" | tee -a "$out/summary.txt"
  echo "exit $code" | tee -a "$out/summary.txt"
}

if python3 -c "import jax, sys; sys.exit(jax.devices()[0].platform == 'cpu')"; then
  preset bf16 200
  preset bf16_remat_block 170 --remat=block
  preset bf16_batch32 170 --batch=32
else
  preset cpu_check 300
fi
