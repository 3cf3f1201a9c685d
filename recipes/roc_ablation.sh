#!/usr/bin/env bash
# The latent-space figure of the SLD paper on ROCStories, one GPU: the three autoencoder loss variants
# (vanilla / noise-robust / noise-robust + contrastive) of today's ROC profile (configs/autoencoder_roc.yaml,
# the from-scratch decoder: on the GPU it reconstructs ROC far sooner than the SmolLM2 profile, BLEU 26
# after 421 steps against 10 after 571, docs/results.md, twelfth session), trained alike, then
#   * the autoencoder report: reconstruction BLEU, BLEU under latent noise, paraphrase / negative ratio;
#   * the latent map of held-out sentence / paraphrase / out-of-domain triples (roc/pairs_valid), with
#     the paraphrase / negative distance ratio of each variant;
#   * the training curves of the three runs;
#   * a denoiser on the contrastive autoencoder (ROC continuation, DM_MINUTES) and the denoising
#     trajectory of one continuation through the latent space.
# Figures: $OUT/roc_ablation_figures; report: $OUT/roc_ablation_report; summaries and logs: $OUT.
#   bash recipes/roc_ablation.sh                          # 1,000 steps a variant: 14 minutes on an H200 to the
#                                                         # latent map (2026-12-04), then the denoiser's DM_MINUTES
#   SMOKE=1 bash recipes/roc_ablation.sh                  # a minute on a CPU, to check the recipe
#   ABL_STEPS=300 ABL_MINUTES=2.8 bash recipes/roc_ablation.sh   # the same step count for every variant
#   AE_ARGS="loop.compile=true" bash recipes/roc_ablation.sh      # compiled: 1.39x the segments/s after
#                                                                 # about 70 s of compiling (H200)
#   ABL_TOGETHER=1 bash recipes/roc_ablation.sh           # the three variants at once, a third of the card each:
#                   only for profiles that fit it (the default ROC profile's adversarial variants peak at
#                   72.6 GiB at batch 1,024 and ran out of memory on an H200; vanilla alone 38.9 GiB)
#   PHASES="report figures" bash recipes/roc_ablation.sh  # redraw from the runs already in $RUNS/roc
# Phases, in order: seg, variants, report, figures, trajectory (PHASES picks; default all).
# ABL_MINUTES only guards a slow machine: a variant stopped by it is not at the equal step count, and
# the recipe says so.
. "$(dirname "$0")/common.sh"
R=$RUNS/roc
ABL_STEPS=${ABL_STEPS:-1000}
ABL_MINUTES=${ABL_MINUTES:-$([ "${ABL_TOGETHER:-0}" = 1 ] && echo 10 || echo 6)}   # at once, each runs slower
DM_MINUTES=${DM_MINUTES:-2}
FIGURES=$OUT/roc_ablation_figures
VARIANTS=(vanilla noise_robust contrastive)
LABELS="vanilla,noise-robust,noise-robust + contrastive"

if has seg; then
    log "segment ROC: all sentences (autoencoders) and continuation (denoiser)"
    "${SLD[@]}" segment -c configs/segment_roc_unconditional.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_all > "$OUT/roc_segment_all.log" 2>&1
    "${SLD[@]}" segment -c configs/segment_roc_continuation.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_continuation > "$OUT/roc_segment_continuation.log" 2>&1
fi

# train_variant VARIANT: one autoencoder of the ablation, its summary and metrics copied to $OUT
train_variant() {
    local variant=$1
    # shellcheck disable=SC2086
    "${SLD[@]}" train-autoencoder -c configs/ablation_roc_$variant.yaml data.segmented_dir=$R/segmented_all \
        data.pairs_train="$(data_file roc/pairs_train)" output_dir=$R/ablation/$variant \
        loop.max_steps=$ABL_STEPS loop.eval_every=$((ABL_STEPS / 4 > 0 ? ABL_STEPS / 4 : 1)) \
        loop.save_every=$ABL_STEPS loop.max_minutes=$ABL_MINUTES "${SMOKE_AE[@]}" ${AE_ARGS:-} \
        2>&1 | quiet > "$OUT/roc_ablation_$variant.log"
    cp $R/ablation/$variant/summary.json "$OUT/roc_ablation_${variant}_summary.json"
    cp $R/ablation/$variant/metrics.jsonl "$OUT/roc_ablation_${variant}_metrics.jsonl"
}
if has variants; then
    if [ "${ABL_TOGETHER:-0}" = 1 ]; then
        # all three at once, each with a third of the card's memory: for a profile whose steps are
        # launch-bound and fit a third of the card (not the default one: see the header)
        log "autoencoders ${VARIANTS[*]} at once: $ABL_STEPS steps each (cap $ABL_MINUTES min)"
        for variant in "${VARIANTS[@]}"; do SLD_CUDA_MEMORY_FRACTION=0.32 train_variant $variant & done
        wait
    else
        for variant in "${VARIANTS[@]}"; do
            log "autoencoder $variant: $ABL_STEPS steps (cap $ABL_MINUTES min)"
            train_variant $variant
        done
    fi
    for variant in "${VARIANTS[@]}"; do
        python3 - "$R/ablation/$variant/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"  {sys.argv[1]}: steps {s['steps']} ({s['stopped_by']}), validation BLEU {s.get('eval/bleu', float('nan')):.2f}, "
      f"{s.get('train/items_per_second', float('nan')):.0f} segments/s")
if s["stopped_by"] != "max_steps":  # the variants are only comparable at an equal step count
    print(f"WARNING {sys.argv[1]}: stopped by {s['stopped_by']} at step {s['steps']}, not at max_steps")
PY
    done
fi

runs=$(for variant in "${VARIANTS[@]}"; do echo "$R/ablation/$variant"; done | paste -sd, -)
if has report; then
    log "autoencoder report"
    "${SLD[@]}" autoencoder-report "autoencoders=[$runs]" "labels=[$LABELS]" segments=$R/segmented_all/valid.jsonl \
        pairs="$(data_file roc/pairs_valid)" output_dir="$OUT/roc_ablation_report" "${SMOKE_REPORT[@]}" 2>&1 | quiet | tail -12
fi
if has figures; then
    log "latent map and training curves"
    "${SLD[@]}" visualize latent-map pairs="$(data_file roc/pairs_valid)" output_dir="$FIGURES" \
        "latent_map.autoencoders=[$runs]" "latent_map.labels=[$LABELS]" 2>&1 | quiet | tail -8
    "${SLD[@]}" visualize curves output_dir="$FIGURES" "curves.runs=[$runs]" "curves.labels=[$LABELS]" 2>&1 | quiet | tail -3
fi
if has trajectory; then
    log "denoiser on the contrastive autoencoder ($DM_MINUTES min), then one continuation's trajectory"
    "${SLD[@]}" train-diffusion -c configs/diffusion_roc_continuation.yaml autoencoder=$R/ablation/contrastive \
        data.segmented_dir=$R/segmented_continuation output_dir=$R/ablation/diffusion loop.max_minutes=$DM_MINUTES \
        "${SMOKE_DM[@]}" 2>&1 | quiet > "$OUT/roc_ablation_diffusion.log"
    cp $R/ablation/diffusion/summary.json "$OUT/roc_ablation_diffusion_summary.json"
    "${SLD[@]}" visualize trajectory trajectory.pipeline=$R/ablation/diffusion \
        trajectory.segmented_file=$R/segmented_continuation/valid.jsonl pairs="$(data_file roc/pairs_valid)" \
        output_dir="$FIGURES" 2>&1 | quiet | tail -8
fi
log "done"
