#!/usr/bin/env bash
# The GPU benchmark (an H100/H200; never part of CI), in under 5 minutes so that it can be rerun once
# (on an H100: install ~15 s, sd35m ~90 s, vlm ~70 s, engines ~85 s):
#   1. Flow-GRPO on an SD3.5-Medium-size pipeline (published transformer config, random init) with LoRA in bf16
#      and gradient checkpointing at 512 px: images/s, peak memory, MFU with the FLOP count stated
#      (benchmarks/gpu_flow_pipeline.py);
#   2. GRPO on a Qwen2.5-VL-3B-size model (LoRA, bf16 autocast): samples/s, tokens/s, peak memory, MFU
#      (benchmarks/gpu_vlm_grpo.py);
#   3. the smoke recipe's step under DeepSpeed ZeRO-2, ZeRO-3 and FSDP (one process each): they run, and their
#      step times.
#
#   bash benchmarks/gpu.sh            # everything; results and logs in $OUT (or /tmp/gpu_bench)
#   PARTS="vlm" bash benchmarks/gpu.sh  # some of: sd35m vlm engines
#
# The figures go into docs/benchmarks.md by hand (with the card's name): this script only measures.
set -u
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then  # packages the lent machine lacks, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
LOG=$OUT/gpu_bench.log
SUMMARY=$OUT/summary.txt
: > "$LOG"; : > "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
python3 -c "import torch, diffusers, transformers, peft, accelerate, deepspeed; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$SUMMARY"
PARTS=${PARTS:-sd35m vlm engines}
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
part() {  # part NAME TIMEOUT CMD...: run, time, keep the log, one summary line
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo "=== $name: $*" >> "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  printf '%-16s rc=%-3s %4d s\n' "$name" "$?" "$(( $(date +%s) - t0 ))" | tee -a "$SUMMARY"
}
wanted sd35m && part sd35m 150 python3 benchmarks/gpu_flow_pipeline.py --steps 3 --out "$OUT"
wanted sd35m && grep -h "ckpt:" "$LOG" | tail -1 | tee -a "$SUMMARY"
wanted vlm && part vlm_3b 120 python3 benchmarks/gpu_vlm_grpo.py --prompts 4 --group 8 --steps 2 --out "$OUT"
wanted vlm && grep -h "^vlm grpo:" "$LOG" | tail -1 | tee -a "$SUMMARY"
SMOKE=recipes/smoke/flow_grpo_tiny.yaml
for engine in deepspeed_zero2 deepspeed_zero3 fsdp; do
  wanted engines || continue
  extra=()
  [[ $engine == deepspeed_zero3 ]] && extra=(trainer.ema_decay=null)  # EMA is refused under ZeRO-3 (by design)
  part "$engine" 90 python3 -m accelerate.commands.launch --config_file recipes/accelerate/$engine.yaml \
    --num_processes 1 -m genrl.cli train $SMOKE --run-dir /tmp/r/$engine device=cuda "${extra[@]}"
  python3 -c "import json; rows=[json.loads(l) for l in open('/tmp/r/$engine/metrics.jsonl')]; print('$engine', 'steps', len(rows), 'step s', [round(r['time/step'], 3) for r in rows])" 2>&1 | tail -1 | tee -a "$SUMMARY"
done
echo "done" | tee -a "$SUMMARY"
