"""Host time of the AR baseline's prefix-LM batches: from text pairs, and from rows tokenized once.

    python examples/prefix_lm_collate_cost.py TOKENIZER_DIR DOCUMENTS.jsonl [--batch 1024] [--repeats 5]

TOKENIZER_DIR: any tokenizer folder (e.g. an exported SmolLM2, ``sld export-lm``); DOCUMENTS.jsonl:
records with a ``text`` field (ROC's ``train.jsonl``): the first sentence is the source, the rest the
target, as in story continuation. Prints the milliseconds a batch of ``--batch`` rows takes on this
host for each path and their ratio (one process, no loader workers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoTokenizer

from sld.models.baseline import PrefixLMCollator
from sld.models.causal_lm import prepare_tokenizer


def mean_ms(fn, repeats: int) -> float:
    """Mean wall milliseconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer", type=Path)
    parser.add_argument("documents", type=Path)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    prepare_tokenizer(tokenizer, str(args.tokenizer))
    with args.documents.open() as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(args.batch))]
    pairs = [(text.split(". ", 1)[0] + ".", text.split(". ", 1)[-1]) for text in texts]
    collate = PrefixLMCollator(tokenizer, max_source_tokens=64, max_target_tokens=128)
    rows = collate.tokenize(pairs)
    from_text = mean_ms(lambda: collate(pairs), args.repeats)
    from_rows = mean_ms(lambda: collate(rows), args.repeats)
    print(f"batch of {len(pairs)} rows, width {collate(rows)['input_ids'].shape[1]}")
    print(f"from text pairs: {from_text:.1f} ms a batch")
    print(f"from token rows: {from_rows:.1f} ms a batch ({from_text / from_rows:.2f}x less host time)")


if __name__ == "__main__":
    main()
