"""Denoising trajectory of one sentence: noised to pure noise, denoised back by a trained pipeline.

The path is drawn over the latent map of a pairs file (red, light at noise ratio 1, dark at 0) and
the text decoded along it is printed. Defaults fit configs/diffusion_synthetic.yaml
(after `sld quickstart`: --pipeline runs/quickstart/diffusion --segmented
runs/quickstart/segmented_stories/valid.jsonl --pairs runs/quickstart/data/pairs_valid.jsonl):

    python examples/plot_denoising_trajectory.py
    python examples/plot_denoising_trajectory.py --text "Kia was on her way to work." --source "Helper"
"""

from __future__ import annotations

import argparse

from sld.pipeline import SLDPipeline
from sld.viz import (
    denoising_trajectory,
    encode_pairs,
    load_pair_texts,
    plot_trajectory,
    save_figure,
    sentence_from_segmented,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", default="runs/synthetic_stories/diffusion", help="SLDPipeline folder")
    parser.add_argument(
        "--text", help="the sentence; default: first segment of the first --segmented document"
    )
    parser.add_argument("--source", help="source text to condition on (with --text); default unconditional")
    parser.add_argument("--segmented", default="runs/synthetic_stories/segmented/valid.jsonl")
    parser.add_argument("--pairs", default="data/synthetic/pairs_valid.jsonl", help="background; '' for none")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="runs/figures")
    args = parser.parse_args(argv)

    pipe = SLDPipeline.from_pretrained(args.pipeline, device=args.device)
    text, source = (args.text, args.source) if args.text else sentence_from_segmented(args.segmented)
    background = encode_pairs(pipe.autoencoder, load_pair_texts(args.pairs)) if args.pairs else None
    trajectory = denoising_trajectory(pipe, text, source, num_inference_steps=args.steps)
    result = plot_trajectory(trajectory, background)
    print(f"input: {text}\nsource: {source}\nreconstruction: {trajectory.reconstruction}")
    for point in trajectory.decoded:
        print(f"noise {point.noise_ratio:.2f}  x_t: {point.text!r}  x0_hat: {point.x0_text!r}")
    for path in save_figure(result.figure, args.out, "trajectory"):
        print("wrote", path)


if __name__ == "__main__":
    main()
