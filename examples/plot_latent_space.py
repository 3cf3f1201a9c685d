"""Latent map of segment autoencoders: sentences (blue), paraphrases (green), out-of-domain (orange).

One panel per autoencoder folder, mean-pooled latents in a 2-D PCA plane, and the smoothness ratio
mean d(sentence, paraphrase) / mean d(sentence, negative) per panel (lower = smoother). Defaults are
the three ablation runs of configs/ablation_synthetic_*.yaml:

    python examples/plot_latent_space.py
    python examples/plot_latent_space.py runs/a runs/b --pairs ../shared/data/roc/pairs_valid.jsonl
"""

from __future__ import annotations

import argparse

from sld.viz import latent_map, load_pair_texts, save_figure

ABLATION = [f"runs/ablation_synthetic/{v}" for v in ("vanilla", "noise_robust", "contrastive")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("autoencoders", nargs="*", default=ABLATION, help="SegmentAutoencoder folders")
    parser.add_argument(
        "--pairs", default="data/synthetic/pairs_valid.jsonl", help="sentence/paraphrase/negative JSONL"
    )
    parser.add_argument("--max-pairs", type=int, default=200)
    parser.add_argument("--out", default="runs/figures", help="output folder")
    args = parser.parse_args(argv)

    pairs = load_pair_texts(args.pairs, args.max_pairs)
    result = latent_map(args.autoencoders, pairs)
    for panel in result.panels:
        s = panel.smoothness
        print(f"{panel.name:<28} ratio {s.ratio:.3f} (mean-pooled)  {s.flattened.ratio:.3f} (flattened)")
    for path in save_figure(result.figure, args.out, "latent_map"):
        print("wrote", path)


if __name__ == "__main__":
    main()
