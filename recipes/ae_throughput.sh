#!/usr/bin/env bash
# Before/after of the from-scratch ROC autoencoder's step on one GPU (issue 13): today's ROC profile
# (configs/autoencoder_roc.yaml, or TP_CONFIG) alone on the card for TP_MINUTES per variant, one
# variant after the other, then a table of segments/s, MFU, peak memory and validation BLEU from their
# summaries. Needs no LM: its whole carry on a lent machine is .whl + .carry/data + .carry/minilm, e.g.
#   bash recipes/lent_gpu.sh start recipes/ae_throughput.sh TP_MINUTES=1.5 && bash recipes/lent_gpu.sh wait 400
# TP_VARIANTS: space-separated NAME=SETTINGS, SETTINGS comma-separated; a setting with an upper-case
# name before its `=` is an environment variable, any other is a config override. The variant named
# `before` runs the code in BEFORE_CODE (a folder with an older sld/ and stages/, e.g. `mkdir -p
# .carry/before && git archive 2e0215d sld stages | tar -x -C .carry/before`, which lent_gpu.sh
# carries and exports) with this tree's config; so does every variant whose name starts with `before_`
# (e.g. `before_prof=loop.profile_steps=10`: the before code profiled; every profiled variant's step
# breakdown is printed side by side at the end, examples/step_breakdown.py). Default (`before=` first
# when BEFORE_CODE is set):
#   after=                                 this code, the config's defaults (encoder cache, not grouped,
#                                          targets cut at the decoding budget)
#   whole_targets=data.targets_within_budget=false
#                                          the same with every target whole (padded to the batch's longest
#                                          segment; the cut ones are 0.58x those decoder positions at batch
#                                          1,024: examples/decoder_padding.py)
#   compiled=loop.compile=true             the same with every repeated block compiled, shape-generic
#                                          (the trainer sets loop.compile_dynamic=true: the padded length
#                                          and the paraphrase rows change from batch to batch)
#   compiled_fixed=loop.compile=true,data.fixed_decoder_length=true
#                                          compiled for one decoder shape: every batch's targets padded
#                                          to the decoding budget (at batch 1,024 nearly every batch
#                                          reaches it anyway), so the decoder blocks compile once, for
#                                          that shape, not shape-generic (on the CPU its first compiled
#                                          step took 0.65x as long: docs/results.md, twenty-seventh session;
#                                          on an H200 it compiled in about a minute and ran 1.03x the eager
#                                          segments/s: twenty-eighth session)
#   compiled_graphs=loop.compile=true,data.fixed_decoder_length=true,loop.compile_cuda_graphs=true
#                                          compiled_fixed with the fixed-shape block graphs replayed as
#                                          CUDA graphs (Inductor's, mode="reduce-overhead", without graph
#                                          partitions): on an H100 1.12x compiled_fixed's segments/s over
#                                          steps 200-650 (twenty-ninth session; its first 150 steps
#                                          were slower: profile it with loop.profile_after=200);
#                                          not a default variant
#                                          (with losses.conversion_backward_once, this seq2seq decoder's
#                                          default since the thirty-first session, 14,820 over steps 150-700 on an H100,
#                                          1.23x the same without it)
#   compiled_buckets=loop.compile=true,data.decoder_buckets=3
#                                          the same with the decoder passes on 3 length buckets (0.44x
#                                          the decoder's positions at batch 1,024; eager, the buckets
#                                          multiply the launches: docs/results.md, twenty-third session)
# Compiled variants need budgets of minutes: on the H200 of 2026-12-05 (before shape-generic graphs
# were the default) the compiled profile's first three steps took 92 s, and a 1.5-minute run logged no
# rate; give them TP_MINUTES=3.5 or more, or loop.max_minutes=... in their settings (compiled_fixed
# needs less: 2.5 minutes gave 512 steps on the H200 of 2026-12-06, the first 55 in the first 76 s).
# A setting may override the budget of one variant (loop.max_minutes=3: BLEU after 3 minutes). The
# fourteenth and fifteenth sessions' variants (t5_fast, the cache, grouping, the short attentions'
# kernels, the reconstructor compiled alone) are in docs/results.md; those not in `after` were slower.
# TP_WINDOW: the steps (FIRST LAST, default "100 250") over which examples/throughput_window.py compares
#   every variant's logged rows after the table.
# TP_ARGS: overrides for every variant (e.g. losses.variant=vanilla, loop.batch_size=512).
# TP_MAX_STEPS: loop.max_steps of every variant (default: the config's, whose cosine decay spans it; a
#   run of 1,000,000 steps kept the rate at its peak, and a 3-minute run diverged at step ~1,300 on
#   2026-12-04). A variant that reaches max_steps stops before its TP_MINUTES.
#   SMOKE=1 bash recipes/ae_throughput.sh          # a few steps a variant on a CPU (about a minute each: the cache encodes ROC), to check the recipe
# segments/s and MFU: each summary.json's mean of the last logged rows (the first rows include warm-up;
# every row is in the metrics.jsonl copied to $OUT); no profiler runs in these timed runs unless a variant
# sets loop.profile_steps (its profile.txt comes back as throughput_<name>_profile.txt).
. "$(dirname "$0")/common.sh"
R=$RUNS/roc
TP_MINUTES=${TP_MINUTES:-1.5}
TP_CONFIG=${TP_CONFIG:-configs/autoencoder_roc.yaml}
TP_VARIANTS=${TP_VARIANTS:-${BEFORE_CODE:+before= }after= whole_targets=data.targets_within_budget=false compiled=loop.compile=true compiled_fixed=loop.compile=true,data.fixed_decoder_length=true compiled_buckets=loop.compile=true,data.decoder_buckets=3}

if [ ! -f $R/segmented_all/train.jsonl ]; then
    log "segment ROC: all sentences"
    "${SLD[@]}" segment -c configs/segment_roc_unconditional.yaml splits.train="$(data_file roc/train)" \
        splits.valid="$(data_file roc/valid)" output_dir=$R/segmented_all > "$OUT/roc_segment_all.log" 2>&1
fi

here=$(pwd)
runs=$(realpath -m "$R")
pairs=$(realpath "$(data_file roc/pairs_train)")
OUT=$(realpath -m "$OUT")
names=()
failed=()   # variants whose run stopped with an error: a row of their own, the error from their log
for variant in $TP_VARIANTS; do
    name=${variant%%=*}
    settings=${variant#*=}
    envs=()
    overrides=()
    IFS=, read -r -a parts <<< "$settings"
    for part in "${parts[@]}"; do
        if [[ $part =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=("$part"); else overrides+=("$part"); fi
    done
    code=$here
    if [[ $name == before || $name == before_* ]]; then
        [ -n "${BEFORE_CODE:-}" ] || { log "throughput before: BEFORE_CODE is not set, skipped"; continue; }
        code=$(realpath "$BEFORE_CODE")
    fi
    log "throughput $name: ${envs[*]:-} ${overrides[*]:-} (${TP_MINUTES} min, code in $code)"
    rm -rf "$R/throughput_$name"
    # shellcheck disable=SC2086
    (cd "$code" && env "${envs[@]}" PYTHONPATH="$code:${PYTHONPATH:-}" python3 -m sld.cli train-autoencoder \
        -c "$here/$TP_CONFIG" data.segmented_dir="$runs/segmented_all" \
        data.pairs_train="$pairs" output_dir="$runs/throughput_$name" \
        loop.max_minutes=$TP_MINUTES ${TP_MAX_STEPS:+loop.max_steps=$TP_MAX_STEPS} loop.eval_every=1000000 loop.save_every=1000000 \
        data.num_valid_segments=200 "${overrides[@]}" ${TP_ARGS:-} "${SMOKE_AE[@]}" \
        2>&1 | quiet > "$OUT/throughput_$name.log") || { tail -5 "$OUT/throughput_$name.log"; failed+=("$name"); continue; }
    cp $R/throughput_$name/summary.json "$OUT/throughput_${name}_summary.json"
    cp $R/throughput_$name/metrics.jsonl "$OUT/throughput_${name}_metrics.jsonl"
    # a variant run with loop.profile_steps=N leaves its torch.profiler summary
    [ -f $R/throughput_$name/profile.txt ] && cp $R/throughput_$name/profile.txt "$OUT/throughput_${name}_profile.txt"
    names+=("$name")
done

python3 - "$OUT" "${failed[*]:-}" "${names[@]}" <<'PY' | tee "$OUT/throughput_table.md"
import json, sys
from pathlib import Path

out, failed, names = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]


def cell(summary, key, fmt, scale=1.0, unit=""):
    """A summary value, or '-' where the run logged none (its budget ended while it compiled)."""
    value = summary.get(key)
    return "-" if value is None else format(scale * value, fmt) + unit


print("| variant | steps | train s | segments/s | x the first | MFU | peak GiB | validation BLEU |")
print("|---|---|---|---|---|---|---|---|")
first = None
for name in names:
    s = json.loads((out / f"throughput_{name}_summary.json").read_text())
    rate = s.get("train/items_per_second")
    first = rate if first is None else first
    ratio = f"{rate / first:.2f}x" if rate and first else "-"
    print(f"| {name} | {s['steps']} | {s['train_seconds']:.1f} | {cell(s, 'train/items_per_second', ',.0f')} | "
          f"{ratio} | {cell(s, 'train/mfu', '.2f', 100.0, '%')} | {cell(s, 'train/peak_memory_gib', '.1f')} | "
          f"{cell(s, 'eval/bleu', '.2f')} |")
for name in failed:
    lines = (out / f"throughput_{name}.log").read_text(errors="replace").strip().splitlines()
    error = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
    print(f"| {name} | failed: {error.strip()[:160]} | | | | | | |")
PY
# the same window of steps of every run (the summaries average each run's own last rows)
if [ ${#names[@]} -gt 0 ]; then
    metrics=()
    for name in "${names[@]}"; do metrics+=("$OUT/throughput_${name}_metrics.jsonl"); done
    # shellcheck disable=SC2086
    python3 examples/throughput_window.py --steps ${TP_WINDOW:-100 250} --metric train/contrastive "${metrics[@]}" \
        | tee -a "$OUT/throughput_table.md"
fi
# where the step's time went in every profiled variant (loop.profile_steps), side by side
profiles=()
for name in "${names[@]}"; do
    [ -f "$OUT/throughput_${name}_profile.txt" ] && profiles+=("$OUT/throughput_${name}_profile.txt")
done
if [ ${#profiles[@]} -gt 0 ]; then
    python3 examples/step_breakdown.py "${profiles[@]}" | tee -a "$OUT/throughput_table.md"
fi
log "done"
