#!/usr/bin/env bash
# Running a GPU recipe on a machine that starts bare and only takes files through short calls (the
# lent H200 machines of this project's workplace: at most 64 MiB carried and 10 minutes per call,
# given back 30 s after a call returns). What it lacks is carried in git-ignored folders:
#   .carry/parts/<i>/  the SmolLM2 GGUF in parts (recipes/carry_parts.sh split ...)
#   .carry/data/       roc/*.jsonl and dialogsum/*.jsonl.gz     .carry/minilm/  an fp16 MiniLM copy
#   .whl/              wheels of diffusers, nltk, rouge-score, gguf, importlib_metadata
#   .carry/before/     optional: an older sld/ + stages/ (git archive) for before/after measurements
#   .carry/lm_shapes/  optional, instead of parts: SmolLM2's config + tokenizer.json.gz (from `sld export-lm`),
#                      built with random weights there: for timing runs only (tens of KB to carry, not 100 MB)
# A fresh checkout has none of these folders: `bash recipes/carry_build.sh [BEFORE_COMMIT]` builds them all.
# One call per carried folder set, each started while the machine is still warm:
#   bash recipes/lent_gpu.sh setup                  # every call: store what this call carried
#   bash recipes/lent_gpu.sh start recipes/smollm2.sh [VAR=value ...] [then [OTHER.sh] VAR=value ...] && bash recipes/lent_gpu.sh wait 450
#                                                   # last carry call: launch it and follow it (each
#                                                   # "then" starts one more run of the recipe after the last,
#                                                   # or of OTHER.sh when the group names one)
#   bash recipes/lent_gpu.sh wait 570               # later calls: follow it; $OUT/results.tgz at the end
# A recipe without the LM (recipes/roc_ablation.sh) needs one call: carrying .whl, .carry/data and
# .carry/minilm, `bash recipes/lent_gpu.sh start recipes/roc_ablation.sh ABL_TOGETHER=1 && bash recipes/lent_gpu.sh wait 200`.
# Send each call as soon as the previous one returns: the machine is given back 30 s after a call, and
# a later call finds a bare machine (`wait` then says so and exits at once). Even a call sent at once
# can miss (2026-12-03: the `wait` after a 450-s `start` call found a bare machine, and the six runs
# of the recipe were lost), so put the phases that matter most into the first `start` call's wait
# and treat every later call as a bonus (2026-12-04: after two long calls, 474 s and 522 s, the next
# `wait` found a bare machine both times, 62 s after the previous call returned; the short `setup`
# calls between them followed in 7 s. Plan each job to finish inside its `start` call: about 500 s
# of recipe after the setup calls). A call is killed at 600 s
# and then returns nothing: `start` itself takes about a minute (wheels, copies, the LM export), so the
# wait in its call must be shorter (`start ... && wait 540` was killed
# on 2026-12-02 and its output lost; the job itself kept running). On 2026-12-03, after two `setup`
# calls, `start` took 2 s (`start ... && wait 450` returned after 451.8 s); `wait 480` leaves room.
# Machines are also taken back in the middle of a call ("taken back for other work": 2026-12-03, three
# calls, after 23 s, about 200 s and about 310 s of device time), and the run on it is lost with its
# results. Short waits (`start ... && wait 200`, then `wait 200` ...) bring results.tgz back at every
# call, so a take-back loses at most the last call's stretch; each call must still follow within 30 s.
# `setup` installs the wheels into /root/site, copies data and MiniLM to /root/carry, joins the GGUF
# parts once all are there and exports the LM to a plain transformers folder (loads in a second).
# `start` copies the tree to /root/sld (later calls re-send the tree; the job must not read it
# while it changes) and runs the recipe there in its own session, so it outlives the call.
set -euo pipefail
ROOT=${LENT_ROOT:-/root}
RESULTS=$ROOT/results
env_file=$ROOT/sld_env.sh
cmd=${1:-}
shift || true

setup() {
    mkdir -p $ROOT/carry $ROOT/models
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $ROOT/site .whl/*.whl
    fi
    [ -d .carry/data ] && cp -r .carry/data $ROOT/carry/
    [ -d .carry/minilm ] && cp -r .carry/minilm $ROOT/carry/
    [ -d .carry/before ] && rm -rf $ROOT/carry/before && cp -r .carry/before $ROOT/carry/
    [ -d .carry/parts ] && CARRY_STORE=$ROOT/carry/parts bash recipes/carry_parts.sh store
    local gguf=SmolLM2-135M-Instruct.Q4_1.gguf
    # the real weights replace a timing-only LM built by an earlier call from .carry/lm_shapes (ignored
    # paths of an earlier call's tree stay on the machine, so a later call still has .carry/lm_shapes)
    if [ -f $ROOT/models/smollm2/TIMING_ONLY_RANDOM_WEIGHTS ] && [ -f $ROOT/carry/parts/$gguf.part1 ] \
        && [ -f $ROOT/carry/parts/$gguf.part2 ]; then
        echo "replacing the timing-only LM with SmolLM2's weights"
        rm -rf $ROOT/models/smollm2
    fi
    if [ ! -d $ROOT/models/smollm2 ] && [ -f $ROOT/carry/parts/$gguf.part1 ] && [ -f $ROOT/carry/parts/$gguf.part2 ]; then
        CARRY_STORE=$ROOT/carry/parts bash recipes/carry_parts.sh join $gguf $ROOT/models
        PYTHONPATH=$ROOT/site:$PWD python3 -m sld.cli export-lm name=$ROOT/models/$gguf output_dir=$ROOT/models/smollm2 \
            2>&1 | grep -v "Converting\|Loading\|Writing" || true
    fi
    # .carry/lm_shapes: SmolLM2's config and tokenizer (tokenizer.json gzipped) without its weights, for
    # timing runs that do not depend on them (the AR baseline's step, the denoiser's): the LM is built with
    # random weights of the same shapes, and the folder says so (TIMING_ONLY_RANDOM_WEIGHTS).
    if [ ! -d $ROOT/models/smollm2 ] && [ -d .carry/lm_shapes ]; then
        rm -rf $ROOT/models/smollm2.tmp && cp -r .carry/lm_shapes $ROOT/models/smollm2.tmp
        [ -f $ROOT/models/smollm2.tmp/tokenizer.json.gz ] && gunzip $ROOT/models/smollm2.tmp/tokenizer.json.gz
        PYTHONPATH=$ROOT/site python3 - $ROOT/models/smollm2.tmp <<'PY'
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

folder = Path(sys.argv[1])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
(folder / "TIMING_ONLY_RANDOM_WEIGHTS").write_text("random weights of SmolLM2's shapes: for timing runs only\n")
print(f"timing-only LM with random weights in {folder}")
PY
        mv $ROOT/models/smollm2.tmp $ROOT/models/smollm2
    fi
    cat > $env_file <<EOF
export PYTHONPATH=$ROOT/site:$ROOT/sld
export SLD_MINILM_PATH=$ROOT/carry/minilm SLD_SMOLLM2_PATH=$ROOT/models/smollm2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export DATA=$ROOT/carry/data RUNS=$ROOT/runs OUT=$RESULTS
EOF
    if [ -d $ROOT/carry/before ]; then echo "export BEFORE_CODE=$ROOT/carry/before" >> $env_file; fi
    nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader || true
    ls $ROOT/carry $ROOT/models
}

# missing: what an earlier `setup` call should have left on this machine and did not (one per line).
# A call answered "no device machine could be started" does not stop the calls sent after it: they
# start a fresh machine that lacks that call's carry (2026-12-03: the recipe then failed at once for
# want of nltk, and 3.5 device minutes went). Send such a call again: in the eleventh session the
# first call got that answer (91 s of the budget went) and the same call sent again at once got a machine.
# missing RECIPE [ARGS...]: only recipes/smollm2.sh (first or in a later group) needs the LM (recipes/roc_ablation.sh, for one, does not:
# its whole carry, .whl + .carry/data + .carry/minilm, fits one call).
missing() {
    [ -d $ROOT/site/nltk ] && [ -d $ROOT/site/diffusers ] || echo "wheels (.whl)"
    local arg
    for arg in "$@"; do   # the recipe and the start call's other arguments (a later group's recipe)
        if [[ $(basename "$arg") == smollm2*.sh ]] && [ ! -d $ROOT/models/smollm2 ]; then
            echo "the exported LM (.carry/parts/1 and .carry/parts/2, or .carry/lm_shapes for timing)"
            break
        fi
    done
    [ -d $ROOT/carry/data ] || echo "data (.carry/data)"
    [ -d $ROOT/carry/minilm ] || echo "MiniLM (.carry/minilm)"
}

case "$cmd" in
setup) setup ;;
start)
    setup
    recipe=$1
    if [ -n "$(missing "$@")" ] && [ "${LENT_FORCE:-0}" != 1 ]; then
        echo "not started: this machine lacks $(missing "$@" | paste -sd ';' -) (a fresh machine? run the" \
            "setup calls again; LENT_FORCE=1 starts anyway)" >&2
        exit 4
    fi
    shift
    rm -rf $ROOT/sld && mkdir -p $ROOT/sld $RESULTS && cp -r . $ROOT/sld/
    rm -rf $ROOT/sld/.carry $ROOT/sld/.whl
    # the job: one recipe run per group of VAR=value arguments, groups separated by "then", one
    # after the other (each run's own "] done" line is not the end: the job's last line is)
    job=$ROOT/job.sh
    {
        echo "cd $ROOT/sld && . $env_file"
        run=()
        group_recipe=$recipe
        for arg in "$@" then; do
            if [ "$arg" = then ]; then
                # one %q per argument (printf ' %q' with no argument at all would print '' and run it)
                printf 'env'; for var in "${run[@]}"; do printf ' %q' "$var"; done; printf ' bash %q\n' "$group_recipe"
                run=()
                group_recipe=$recipe
            elif [[ $arg == *.sh ]]; then
                group_recipe=$arg   # "then recipes/other.sh VAR=value": this group runs another recipe
            else
                run+=("$arg")
            fi
        done
        echo "echo '[lent_gpu] job done'"
    } > $job
    (setsid nohup bash $job > $RESULTS/recipe.log 2>&1 &)
    echo "started $recipe $* (log: $RESULTS/recipe.log)"
    ;;
wait)
    # Done when the log has the job's last line. (Not a pid: seen on 2026-12-02, a job started
    # in one call was still running, GPU at 100%, while `kill -0 <its pid>` failed in the next call.)
    limit=${1:-570}
    waited=0
    if [ ! -f $RESULTS/recipe.log ]; then
        # a bare machine: the one that ran the recipe was given back (2026-12-02: a `wait` call sent
        # more than 30 s after the previous one returned waited 450 s here for nothing)
        echo "no recipe has run on this machine (no $RESULTS/recipe.log): the earlier one was given back"
        exit 3
    fi
    finished() { grep -q '^\[lent_gpu\] job done' $RESULTS/recipe.log 2>/dev/null; }
    while ! finished && [ $waited -lt "$limit" ]; do
        sleep 10
        waited=$((waited + 10))
    done
    grep -v " INFO " $RESULTS/recipe.log | tail -40 || true
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
    if [ -n "${OUT:-}" ]; then
        tar czf "$OUT/results.tgz" -C $RESULTS . && ls -la "$OUT"
    fi
    if finished; then echo "FINISHED after ${waited}s"; else echo "STILL RUNNING after ${waited}s"; fi
    ;;
*)
    echo "usage: $0 setup | start RECIPE [VAR=value ...] | wait [SECONDS]" >&2
    exit 2
    ;;
esac
