#!/usr/bin/env bash
# GPU checks that CPU CI cannot make, in one short run on a lent GPU (about 6 minutes):
#   1. the smoke recipe on CUDA under each engine (plain, DeepSpeed ZeRO-2, ZeRO-3, FSDP), one process
#      each, stopped after step 2 and resumed to step 3 (checkpoint + resume on that engine);
#   2. reward-model training (the video preference model) on CUDA in fp32 and bf16, timed;
#   3. the Flow-GRPO step benchmark of the quick start (framework step vs raw compute floor);
#   4. Flow-GRPO on an SD3.5-Medium-size pipeline (random init, real transformer config) through the real
#      pipeline path: LoRA in bf16, with and without gradient checkpointing: seconds, memory, MFU
#      (benchmarks/gpu_flow_pipeline.py; about 3 minutes).
#
#   bash benchmarks/gpu_check.sh                      # all checks; logs to $OUT (or /tmp/gpu_check)
#   CHECKS="fsdp video_rm" bash benchmarks/gpu_check.sh   # some: plain zero2 zero3 fsdp video_rm step sd35m
#
# Wheels in .whl/ (diffusers, datasets, deepspeed, ... for a machine that lacks them) are installed
# into /tmp/site first. Every check runs even if an earlier one failed; the summary says which did.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export OMP_NUM_THREADS=4 GENRL_CACHE=/tmp/gcache PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.txt
: > "$LOG"; : > "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
python3 -c "import torch, diffusers, transformers, accelerate, deepspeed, datasets; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'deepspeed', deepspeed.__version__, 'datasets', datasets.__version__)" 2>&1 | tail -1 | tee -a "$SUMMARY"

CHECKS=${CHECKS:-plain zero2 zero3 fsdp video_rm step sd35m}
wanted() { [[ " $CHECKS " == *" $1 "* ]]; }

check() {  # check NAME TIMEOUT CMD... : run, time, keep the log, one summary line
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s%N)
  echo "=== $name: $*" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %6d ms\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" | tee -a "$SUMMARY"
}

SMOKE=recipes/smoke/flow_grpo_tiny.yaml
wanted plain && check plain_cuda 120 python3 -m genrl.cli train $SMOKE --run-dir /tmp/r/plain device=cuda
for engine in deepspeed_zero2 deepspeed_zero3 fsdp; do
  wanted "${engine#deepspeed_}" || continue
  extra=()
  [[ $engine == deepspeed_zero3 ]] && extra=(trainer.ema_decay=null)  # EMA is refused under ZeRO-3 (by design)
  launch=(python3 -m accelerate.commands.launch --config_file recipes/accelerate/$engine.yaml --num_processes 1
          -m genrl.cli train $SMOKE --run-dir /tmp/r/$engine device=cuda "${extra[@]}")
  check "${engine}_to_2" 180 "${launch[@]}" --until-step 2
  check "${engine}_resume" 180 "${launch[@]}"
  python3 -c "import json; m=json.load(open('/tmp/r/$engine/manifest.json')); print('$engine', m['hardware']['engine'], 'sessions', len(m['sessions']), 'checkpoints', [c['step'] for c in m['checkpoints']])" 2>&1 | tail -1 | tee -a "$SUMMARY"
done

wanted video_rm && python3 -m genrl.data.moving_digits --out /tmp/vid.parquet --n 3000 >> "$LOG" 2>&1
for mp in no bf16; do
  wanted video_rm || continue
  check "video_rm_$mp" 180 python3 -m genrl.cli reward train reward_models/moving_digits_video/train.yaml \
    data.path=/tmp/vid.parquet device=cuda mixed_precision=$mp --run-dir /tmp/r/rm_$mp
  python3 -c "import json; m=json.load(open('/tmp/r/rm_$mp/model/config.json')); print('video_rm_$mp', 'held-out acc', round(m['metrics']['eval/accuracy'], 4), 'train s', m['training_seconds'], 'updates', m['updates'])" 2>&1 | tail -1 | tee -a "$SUMMARY"
done

wanted step && t0=$(date +%s) && timeout 240 python3 benchmarks/flow_grpo_step.py --repeats 3 device=cuda > "$OUT/flow_grpo_step.txt" 2>&1
wanted step && echo "flow_grpo_step rc=$? $(( $(date +%s) - t0 )) s (table in flow_grpo_step.txt)" | tee -a "$SUMMARY"
wanted sd35m && check sd35m_flow_grpo 420 python3 benchmarks/gpu_flow_pipeline.py --out "$OUT"
wanted sd35m && tail -n 2 "$LOG" | tee -a "$SUMMARY"
echo "done" | tee -a "$SUMMARY"
