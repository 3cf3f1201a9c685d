#!/usr/bin/env bash
# The latent-space figure of the SLD paper on ROCStories, one GPU, about 9 minutes:
# three autoencoders (vanilla / noise-robust / noise-robust + contrastive) trained alike, then
#   * the latent map of held-out sentence / paraphrase / out-of-domain triples (roc/pairs_valid),
#     with the paraphrase / negative distance ratio of each variant;
#   * the autoencoder report: reconstruction BLEU, BLEU under latent noise, the same ratio;
#   * the training curves of the three runs.
#   bash recipes/roc_ablation.sh
#   SMOKE=1 bash recipes/roc_ablation.sh                  # minutes on a CPU, to check the recipe
#   ABL_STEPS=300 ABL_MINUTES=2.8 bash recipes/roc_ablation.sh   # the same step count for every variant
. "$(dirname "$0")/common.sh"
R=$RUNS/roc
ABL_STEPS=${ABL_STEPS:-300}
ABL_MINUTES=${ABL_MINUTES:-2.8}
"${SLD[@]}" segment -c configs/segment_roc_unconditional.yaml splits.train="$(data_file roc/train)" \
    splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_all > "$OUT/roc_segment_all.log"
runs=()
for variant in vanilla noise_robust contrastive; do
    "${SLD[@]}" train-autoencoder -c configs/ablation_roc_$variant.yaml data.segmented_dir=$R/segmented_all \
        data.pairs_train="$(data_file roc/pairs_train)" output_dir=$R/ablation/$variant \
        loop.max_steps=$ABL_STEPS loop.eval_every=$ABL_STEPS loop.max_minutes=$ABL_MINUTES \
        "${SMOKE_AE[@]}" ${AE_ARGS:-} 2>&1 | quiet > "$OUT/roc_ablation_$variant.log"
    cp $R/ablation/$variant/summary.json "$OUT/roc_ablation_${variant}_summary.json"
    python3 - "$R/ablation/$variant/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
if s["stopped_by"] != "max_steps":  # the variants are only comparable at an equal step count
    print(f"WARNING {sys.argv[1]}: stopped by {s['stopped_by']} at step {s['steps']}, not at max_steps")
PY
    runs+=($R/ablation/$variant)
done
list=$(IFS=,; echo "${runs[*]}")
"${SLD[@]}" visualize latent-map pairs="$(data_file roc/pairs_valid)" output_dir="$OUT/roc_ablation_figures" \
    "latent_map.autoencoders=[$list]" 2>&1 | quiet | tail -8
"${SLD[@]}" visualize curves output_dir="$OUT/roc_ablation_figures" "curves.runs=[$list]" 2>&1 | quiet | tail -3
"${SLD[@]}" autoencoder-report "autoencoders=[$list]" segments=$R/segmented_all/valid.jsonl \
    pairs="$(data_file roc/pairs_valid)" output_dir="$OUT/roc_ablation_report" "${SMOKE_REPORT[@]}" 2>&1 | quiet | tail -12
