#!/usr/bin/env bash
# ROCStories story continuation end to end on one GPU in about 9 minutes:
# segment -> autoencoder (4 min) -> diffusion (4 min) -> continue the 500 validation stories -> evaluate.
#   bash recipes/roc_continuation.sh                   # data from ../shared/data, runs into runs/
#   SMOKE=1 bash recipes/roc_continuation.sh           # a few minutes on a CPU, to check the recipe
#   AE_ARGS="loop.max_minutes=3" DM_ARGS="..."         # extra overrides for the two training stages
. "$(dirname "$0")/common.sh"
R=$RUNS/roc
"${SLD[@]}" segment -c configs/segment_roc_unconditional.yaml splits.train="$(data_file roc/train)" \
    splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_all > "$OUT/roc_segment_all.log"
"${SLD[@]}" segment -c configs/segment_roc_continuation.yaml splits.train="$(data_file roc/train)" \
    splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_continuation > "$OUT/roc_segment_continuation.log"
"${SLD[@]}" train-autoencoder -c configs/autoencoder_roc.yaml data.segmented_dir=$R/segmented_all \
    data.pairs_train="$(data_file roc/pairs_train)" output_dir=$R/autoencoder "${SMOKE_AE[@]}" ${AE_ARGS:-} 2>&1 \
    | grep -v "accelerate.checkpointing\|Loading weights\|Writing model" > "$OUT/roc_autoencoder.log"
cp $R/autoencoder/summary.json "$OUT/roc_autoencoder_summary.json"
"${SLD[@]}" train-diffusion -c configs/diffusion_roc_continuation.yaml autoencoder=$R/autoencoder \
    data.segmented_dir=$R/segmented_continuation output_dir=$R/diffusion_continuation "${SMOKE_DM[@]}" ${DM_ARGS:-} 2>&1 \
    | grep -v "accelerate.checkpointing\|Loading weights\|Writing model" > "$OUT/roc_diffusion.log"
cp $R/diffusion_continuation/summary.json "$OUT/roc_diffusion_summary.json"
"${SLD[@]}" generate model=$R/diffusion_continuation input=$R/segmented_continuation/valid.jsonl \
    output="$OUT/roc_sld_predictions.jsonl" batch_size=500 "${SMOKE_GEN[@]}" 2>&1 | grep -v "Loading weights" | tail -3
"${SLD[@]}" evaluate predictions.SLD="$OUT/roc_sld_predictions.jsonl" output_dir="$OUT/roc_eval" mauve=false
