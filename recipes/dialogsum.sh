#!/usr/bin/env bash
# DialogSum (dialogue -> summary) on one GPU, SLD against the AR baseline; phases as in roc_continuation.sh:
#   sld   segment -> autoencoder -> diffusion -> summarise the 500 validation dialogues
#   ar    the AR baseline (same encoder, decoder size and tokenizer) -> the same 500 dialogues
#   eval  one quality table for both;  bench  the speed benchmark of both models
#
#   bash recipes/dialogsum.sh                              # all phases, data from ../shared/data
#   SMOKE=1 bash recipes/dialogsum.sh                      # minutes on a CPU, to check the recipe
# Budgets (minutes): AE_MINUTES (3), DM_MINUTES (2.5), AR_MINUTES (default AE+DM: an equal budget);
# AE_ARGS / DM_ARGS / AR_ARGS / BENCH_ARGS add overrides. Everything worth keeping lands in $OUT.
. "$(dirname "$0")/common.sh"
R=$RUNS/dialogsum
AE_MINUTES=${AE_MINUTES:-3}
DM_MINUTES=${DM_MINUTES:-2.5}
AR_MINUTES=${AR_MINUTES:-$(python3 -c "print($AE_MINUTES + $DM_MINUTES)")}
if has sld; then
    "${SLD[@]}" segment -c configs/segment_dialogsum.yaml splits.train="$(data_file dialogsum/train)" \
        splits.valid="$(data_file dialogsum/valid)" output_dir=$R/segmented > "$OUT/dialogsum_segment.log"
    "${SLD[@]}" train-autoencoder -c configs/autoencoder_dialogsum.yaml data.segmented_dir=$R/segmented \
        output_dir=$R/autoencoder loop.max_minutes=$AE_MINUTES "${SMOKE_AE[@]}" ${AE_ARGS:-} 2>&1 \
        | quiet > "$OUT/dialogsum_autoencoder.log"
    cp $R/autoencoder/summary.json "$OUT/dialogsum_autoencoder_summary.json"
    "${SLD[@]}" train-diffusion -c configs/diffusion_dialogsum.yaml autoencoder=$R/autoencoder \
        data.segmented_dir=$R/segmented output_dir=$R/diffusion loop.max_minutes=$DM_MINUTES \
        "${SMOKE_DM[@]}" ${DM_ARGS:-} 2>&1 | quiet > "$OUT/dialogsum_diffusion.log"
    cp $R/diffusion/summary.json "$OUT/dialogsum_diffusion_summary.json"
    "${SLD[@]}" generate model=$R/diffusion input=$R/segmented/valid.jsonl \
        output="$OUT/dialogsum_sld_predictions.jsonl" batch_size=500 "${SMOKE_GEN[@]}" 2>&1 | quiet | tee "$OUT/dialogsum_sld_generate.log" | tail -3
fi
if has ar; then run_baseline dialogsum configs/baseline_dialogsum.yaml $R/autoencoder $R/segmented $R/baseline; fi
if has eval; then run_eval dialogsum; fi
if has bench; then run_bench dialogsum $R/diffusion $R/baseline $R/segmented; fi
