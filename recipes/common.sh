# Shared set-up for the GPU recipes. Source it: `. recipes/common.sh`.
# DATA   folder with roc/*.jsonl[.gz] and dialogsum/*.jsonl[.gz] (default ../shared/data)
# RUNS   where run folders go (default runs)
# OUT    where metrics, predictions and logs are copied (default $RUNS/out)
# SMOKE=1 shrinks every budget to seconds, to check a recipe on a CPU before spending GPU time.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OUT=${OUT:-$RUNS/out}
mkdir -p "$RUNS" "$OUT"
export PYTHONUNBUFFERED=1
# `sld` when installed, else the stage modules from this checkout
if command -v sld >/dev/null 2>&1; then SLD=(sld); else SLD=(python3 -m sld.cli); fi
data_file() {  # data_file roc/train -> the .jsonl or .jsonl.gz that exists
    if [ -f "$DATA/$1.jsonl" ]; then echo "$DATA/$1.jsonl"; else echo "$DATA/$1.jsonl.gz"; fi
}
if [ "${SMOKE:-0}" = 1 ]; then
    SMOKE_AE=(loop.max_steps=3 loop.eval_every=3 loop.save_every=3 loop.batch_size=8 data.num_valid_segments=8
              model.decoder_config.d_model=32 model.decoder_config.num_decoder_layers=1 model.decoder_config.num_heads=2
              model.decoder_config.d_ff=64 model.decoder_config.d_kv=16 loop.mixed_precision=no loop.num_workers=0)
    SMOKE_DM=(loop.max_steps=3 loop.eval_every=3 loop.save_every=3 loop.batch_size=8 data.num_valid_documents=4
              denoiser.width=32 denoiser.depth=2 denoiser.heads=2 loop.mixed_precision=no loop.num_workers=0
              sampling.num_inference_steps=2)
    SMOKE_GEN=(limit=6 num_inference_steps=2)
    SMOKE_AR=(loop.max_steps=3 loop.eval_every=3 loop.save_every=3 loop.batch_size=8 data.num_valid_documents=4
              loop.mixed_precision=no loop.num_workers=0)
    SMOKE_BENCH=(num_documents=4 "batch_sizes=[2]" max_batches=1 dtype=float32 "samplers=[{scheduler: dpm++, steps: 2}]")
    SMOKE_REPORT=(num_segments=16 "noise_levels=[0.5]")
else
    SMOKE_AE=(); SMOKE_DM=(); SMOKE_GEN=(); SMOKE_AR=(); SMOKE_BENCH=(); SMOKE_REPORT=()
fi
# PHASES picks what a recipe runs (default: all of them); `has sld` tests for one.
has() { [[ " ${PHASES:-all} " == *" $1 "* || " ${PHASES:-all} " == *" all "* ]]; }
# quiet: drop per-checkpoint and weight-loading chatter from a stage's log
quiet() { grep -v "accelerate.checkpointing\|Loading weights\|Writing model" || true; }
