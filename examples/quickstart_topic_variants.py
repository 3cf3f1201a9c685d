"""Topic agreement of a trained quickstart's stories under other generation settings.

    python examples/quickstart_topic_variants.py runs/quickstart --num-inputs 128 --seeds 0 1
    python examples/quickstart_topic_variants.py runs/qs_a runs/qs_b --saved-only --num-inputs 200
    python examples/quickstart_topic_variants.py runs/quickstart --steps 25 10 --task dialogues --num-inputs 64
    python examples/quickstart_topic_variants.py runs/quickstart --no-repeat-ngram 0 3 --num-inputs 256

Generates the first ``--num-inputs`` validation stories (or dialogues' summaries, ``--task``) of
finished ``sld quickstart`` folders with the pipeline's saved settings and (without ``--saved-only``)
with each variant below (guidance 6, 4 candidates with MBR selection, 50 sampler steps), or with each
sampler step count of ``--steps`` (or each n-gram block of the decoder, ``--no-repeat-ngram``; 0 = none)
instead, for every seed, and prints the topic agreement of each
(``sld.eval.topic_agreement``; validation data only) with the seconds its generation took, then each
folder's mean over the seeds. More inputs and seeds than the quickstart's own narrow the generation's
share of the noise when two quickstarts' models are compared. No training: the models are the
quickstarts'.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sld.eval.topic_agreement import format_topic_scores, score_topics
from sld.generation import generate_texts, prediction_rows, read_generation_inputs
from sld.loading import load_model

VARIANTS = [{}, {"guidance_scale": 6.0}, {"num_candidates": 4}, {"num_inference_steps": 50}]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart_dirs", type=Path, nargs="+")
    parser.add_argument("--num-inputs", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--saved-only", action="store_true", help="only the pipeline's saved settings")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="sampler step counts to compare")
    parser.add_argument(
        "--no-repeat-ngram",
        type=int,
        nargs="+",
        default=None,
        help="decoder n-gram blocks to compare (0: none)",
    )
    parser.add_argument("--task", choices=("stories", "dialogues"), default="stories")
    args = parser.parse_args(argv)
    if args.steps:
        variants = [{"num_inference_steps": steps} for steps in args.steps]
    elif args.no_repeat_ngram:
        variants = [{"no_repeat_ngram_size": n} for n in args.no_repeat_ngram]
    else:
        variants = VARIANTS[:1] if args.saved_only else VARIANTS
    task = args.task
    for root in args.quickstart_dirs:
        pipe = load_model(str(root / "diffusion"), kinds=("pipeline",))
        inputs = read_generation_inputs(root / f"segmented_{task}" / "valid.jsonl", limit=args.num_inputs)
        topic_files = [root / "data" / f"{task}_train.jsonl", root / "data" / f"{task}_valid.jsonl"]
        agreement: dict[str, list[float]] = {}
        for seed in args.seeds:
            for variant in variants:
                started = time.perf_counter()
                generated = generate_texts(pipe, [item.source for item in inputs], seed=seed, **variant)
                seconds = time.perf_counter() - started
                rows = prediction_rows(inputs, generated)
                scores = score_topics(rows, topic_files, root / f"segmented_{task}")
                name = ", ".join(f"{k}={v}" for k, v in variant.items()) or "saved settings"
                agreement.setdefault(name, []).append(scores["generated"]["agreement"])
                print(
                    f"{root} seed {seed}, {name}: {format_topic_scores(scores)} (generated in {seconds:.1f} s)"
                )
        for name, values in agreement.items():
            print(
                f"{root}, {name}: mean generated agreement {sum(values) / len(values):.3f} over {len(values)} seeds"
            )


if __name__ == "__main__":
    main()
