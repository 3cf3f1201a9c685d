"""Topic agreement of a trained quickstart's stories under other generation settings.

    python examples/quickstart_topic_variants.py runs/quickstart --num-inputs 128 --seeds 0 1

Generates the first ``--num-inputs`` validation stories of a finished ``sld quickstart`` folder with
the pipeline's saved settings and with each variant below (guidance 6, 4 candidates with MBR
selection, 50 sampler steps), for every seed, and prints the topic agreement of each
(``sld.eval.topic_agreement``; validation data only). No training: the models are the quickstart's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sld.eval.topic_agreement import format_topic_scores, score_topics
from sld.generation import generate_texts, prediction_rows, read_generation_inputs
from sld.loading import load_model

VARIANTS = [{}, {"guidance_scale": 6.0}, {"num_candidates": 4}, {"num_inference_steps": 50}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart_dir", type=Path)
    parser.add_argument("--num-inputs", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    root = args.quickstart_dir
    pipe = load_model(str(root / "diffusion"), kinds=("pipeline",))
    inputs = read_generation_inputs(root / "segmented_stories" / "valid.jsonl", limit=args.num_inputs)
    topic_files = [root / "data" / "stories_train.jsonl", root / "data" / "stories_valid.jsonl"]
    for seed in args.seeds:
        for variant in VARIANTS:
            started = time.perf_counter()
            generated = generate_texts(pipe, [item.source for item in inputs], seed=seed, **variant)
            scores = score_topics(prediction_rows(inputs, generated), topic_files, root / "segmented_stories")
            name = ", ".join(f"{k}={v}" for k, v in variant.items()) or "saved settings"
            print(
                f"seed {seed}, {name}: {format_topic_scores(scores)} ({time.perf_counter() - started:.0f} s)"
            )


if __name__ == "__main__":
    main()
