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
    SMOKE_BENCH=(num_documents=4 "batch_sizes=[2]" max_batches=1 repeats=1 dtype=float32 "samplers=[{scheduler: dpm++, steps: 2}]")
    SMOKE_REPORT=(num_segments=16 "noise_levels=[0.5]")
else
    SMOKE_AE=(); SMOKE_DM=(); SMOKE_GEN=(); SMOKE_AR=(); SMOKE_BENCH=(); SMOKE_REPORT=()
fi
# PHASES picks what a recipe runs (default: all of them); `has sld` tests for one.
has() { [[ " ${PHASES:-all} " == *" $1 "* || " ${PHASES:-all} " == *" all "* ]]; }
# quiet: drop per-checkpoint and weight-loading chatter from a stage's log
# line-buffered: a log tee'd from it keeps every finished line when the run is cut short
quiet() { grep --line-buffered -v "accelerate.checkpointing\|Loading weights\|Writing model" || true; }

# The phases both SLD-vs-AR recipes share; NAME prefixes every file in $OUT.
# run_baseline NAME CONFIG AUTOENCODER_DIR SEGMENTED_DIR RUN_DIR: train the AR baseline, then predict valid
run_baseline() {
    "${SLD[@]}" train-baseline -c "$2" match_autoencoder="$3" data.segmented_dir="$4" output_dir="$5" \
        loop.max_minutes=$AR_MINUTES "${SMOKE_AR[@]}" ${AR_ARGS:-} 2>&1 | quiet > "$OUT/$1_baseline.log"
    cp "$5/summary.json" "$OUT/$1_baseline_summary.json" 2>/dev/null || true
    "${SLD[@]}" generate model="$5" input="$4/valid.jsonl" output="$OUT/$1_ar_predictions.jsonl" \
        batch_size=250 "${SMOKE_GEN[@]}" 2>&1 | quiet | tee "$OUT/$1_ar_generate.log" | tail -3
}
# run_eval NAME: one quality table for whichever of SLD / AR predictions exist
run_eval() {
    local systems=()
    [ -f "$OUT/$1_sld_predictions.jsonl" ] && systems+=(predictions.SLD="$OUT/$1_sld_predictions.jsonl")
    [ -f "$OUT/$1_ar_predictions.jsonl" ] && systems+=(predictions.AR="$OUT/$1_ar_predictions.jsonl")
    "${SLD[@]}" evaluate "${systems[@]}" output_dir="$OUT/$1_eval" mauve=false 2>&1 | quiet | tail -8
}
# run_bench NAME SLD_DIR BASELINE_DIR SEGMENTED_DIR: both models timed in one process
run_bench() {
    "${SLD[@]}" benchmark -c configs/benchmark.yaml sld_model="$2" baseline_model="$3" input="$4/valid.jsonl" \
        output_dir="$OUT/$1_benchmark" "${SMOKE_BENCH[@]}" ${BENCH_ARGS:-} 2>&1 | quiet | tail -30
}
log() { echo "[$(date +%H:%M:%S)] $*"; }

# fit_or_halve LOG BATCH ACCUM CMD...: CMD with loop.batch_size=BATCH loop.grad_accum_steps=ACCUM, its
# output in LOG; when it dies of GPU memory, once more with BATCH/2 and 2 x ACCUM (the same global
# batch; it resumes from its newest checkpoint if it wrote one), and LOG says so (SMOKE: CMD as given).
fit_or_halve() {
    local logfile=$1 batch=$2 accum=$3
    shift 3
    if [ "${SMOKE:-0}" = 1 ]; then "$@" 2>&1 | quiet > "$logfile"; return; fi
    "$@" loop.batch_size="$batch" loop.grad_accum_steps="$accum" 2>&1 | quiet > "$logfile" && return 0
    grep -q "out of memory\|OutOfMemoryError" "$logfile" || return 1
    mv "$logfile" "$logfile.oom"
    log "$(basename "$logfile"): out of GPU memory at micro-batch $batch; again at $((batch / 2)) x $((accum * 2))"
    echo "RETRY: out of GPU memory at micro-batch $batch ($(basename "$logfile").oom); now $((batch / 2)) x $((accum * 2))" > "$logfile"
    "$@" loop.batch_size=$((batch / 2)) loop.grad_accum_steps=$((accum * 2)) 2>&1 | quiet >> "$logfile"
}
