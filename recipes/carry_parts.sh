#!/usr/bin/env bash
# Move a file larger than one device call may carry (64 MiB with the working tree) to the GPU machine:
# split it here into parts of at most PART_MB (default 48) MB, carry one part per `run` call into a
# folder outside the working tree there, and join them there (the sha256 is checked).
#
# Here, once:
#   bash recipes/carry_parts.sh split path/to/SmolLM2-135M-Instruct.Q4_1.gguf
#       -> .carry/parts/1/<name>.part1, .carry/parts/2/<name>.part2, ... and .carry/parts/1/<name>.sha256
# Then, on the device, one call per part, each made while the machine is still warm (it is given back
# 30 s after a call returns), naming only that part's folder in `carry`:
#   run(command="bash recipes/carry_parts.sh store", carry=[".carry/parts/1"])
#   run(command="bash recipes/carry_parts.sh store && bash recipes/carry_parts.sh join <name> /root/models",
#       carry=[".carry/parts/2"])
# `store` copies every part present in this call's tree to $CARRY_STORE (default /root/sld-carry);
# `join NAME DEST` concatenates NAME's parts from there into DEST/NAME and checks its sha256.
# Measured on an H200 machine: two calls of about 2 s each moved the 98 MB SmolLM2 GGUF file.
set -euo pipefail
STORE=${CARRY_STORE:-/root/sld-carry}
PART_MB=${PART_MB:-48}
cmd=${1:-}
case "$cmd" in
split)
    file=$2
    name=$(basename "$file")
    rm -rf .carry/parts
    tmp=$(mktemp -d)
    split -b "${PART_MB}M" -d -a 2 "$file" "$tmp/$name.part"
    i=0
    for part in "$tmp/$name".part*; do
        i=$((i + 1))
        mkdir -p ".carry/parts/$i"
        mv "$part" ".carry/parts/$i/$name.part$i"
    done
    (cd "$(dirname "$file")" && sha256sum "$name") > ".carry/parts/1/$name.sha256"
    rmdir "$tmp"
    echo "split $file into $i parts under .carry/parts/ (carry one folder per call)"
    ;;
store)
    mkdir -p "$STORE"
    found=0
    for part in .carry/parts/*/*; do
        [ -f "$part" ] || continue
        cp "$part" "$STORE/"
        found=$((found + 1))
    done
    echo "stored $found file(s) in $STORE: $(ls "$STORE" | tr '\n' ' ')"
    ;;
join)
    name=$2
    dest=${3:-$STORE}
    mkdir -p "$dest"
    n=$(ls "$STORE/$name".part* | wc -l)
    : > "$dest/$name"
    for i in $(seq 1 "$n"); do cat "$STORE/$name.part$i" >> "$dest/$name"; done
    (cd "$dest" && sha256sum -c "$STORE/$name.sha256")
    echo "joined $n parts into $dest/$name"
    ;;
*)
    echo "usage: $0 split FILE | store | join NAME [DEST]" >&2
    exit 2
    ;;
esac
