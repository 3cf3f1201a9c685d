#!/usr/bin/env bash
# ROCStories story continuation (first sentence -> the other four) on one GPU, SLD against the AR baseline:
#   sld   segment -> autoencoder -> diffusion -> continue the 500 validation stories
#   ar    the AR baseline (same MiniLM encoder, decoder size and tokenizer) -> the same 500 stories
#   eval  one quality table for both (ROUGE, semantic similarity, distinct-n, distinct outputs, ...)
#   bench the speed benchmark of both models on the same inputs, in one process
#
#   bash recipes/roc_continuation.sh                       # all phases, data from ../shared/data
#   SMOKE=1 bash recipes/roc_continuation.sh               # minutes on a CPU, to check the recipe
#   PHASES="sld eval" AE_MINUTES=4 DM_MINUTES=4 bash recipes/roc_continuation.sh
# Budgets (minutes): AE_MINUTES (3), DM_MINUTES (2.5), AR_MINUTES (default AE+DM: an equal budget);
# AE_ARGS / DM_ARGS / AR_ARGS / BENCH_ARGS add overrides. Everything worth keeping lands in $OUT.
. "$(dirname "$0")/common.sh"
R=$RUNS/roc
AE_MINUTES=${AE_MINUTES:-3}
DM_MINUTES=${DM_MINUTES:-2.5}
AR_MINUTES=${AR_MINUTES:-$(python3 -c "print($AE_MINUTES + $DM_MINUTES)")}
if has sld; then
    "${SLD[@]}" segment -c configs/segment_roc_unconditional.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_all > "$OUT/roc_segment_all.log"
    "${SLD[@]}" segment -c configs/segment_roc_continuation.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_continuation > "$OUT/roc_segment_continuation.log"
    "${SLD[@]}" train-autoencoder -c configs/autoencoder_roc.yaml data.segmented_dir=$R/segmented_all \
        data.pairs_train="$(data_file roc/pairs_train)" output_dir=$R/autoencoder loop.max_minutes=$AE_MINUTES \
        "${SMOKE_AE[@]}" ${AE_ARGS:-} 2>&1 | quiet > "$OUT/roc_autoencoder.log"
    cp $R/autoencoder/summary.json "$OUT/roc_autoencoder_summary.json"
    "${SLD[@]}" train-diffusion -c configs/diffusion_roc_continuation.yaml autoencoder=$R/autoencoder \
        data.segmented_dir=$R/segmented_continuation output_dir=$R/diffusion_continuation \
        loop.max_minutes=$DM_MINUTES "${SMOKE_DM[@]}" ${DM_ARGS:-} 2>&1 | quiet > "$OUT/roc_diffusion.log"
    cp $R/diffusion_continuation/summary.json "$OUT/roc_diffusion_summary.json"
    "${SLD[@]}" generate model=$R/diffusion_continuation input=$R/segmented_continuation/valid.jsonl \
        output="$OUT/roc_sld_predictions.jsonl" batch_size=500 "${SMOKE_GEN[@]}" 2>&1 | quiet | tee "$OUT/roc_sld_generate.log" | tail -3
fi
if has ar; then run_baseline roc configs/baseline_roc_continuation.yaml $R/autoencoder $R/segmented_continuation $R/baseline; fi
if has eval; then run_eval roc; fi
if has bench; then run_bench roc $R/diffusion_continuation $R/baseline $R/segmented_continuation; fi
