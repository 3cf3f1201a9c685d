"""Generate stories and dialogue summaries from a saved SLD pipeline: the public API in three lines.

    from sld import SLDPipeline

    pipe = SLDPipeline.from_pretrained("runs/quickstart/diffusion")
    print(pipe(["The Lost Dog"]).texts[0])

The quickstart's pipeline (``sld quickstart``) learned both tasks with one model: a title gives a
story, a dialogue gives its summary. Every text is a few segments, each decoded from its own latent:

    python examples/generate_stories_and_summaries.py
    python examples/generate_stories_and_summaries.py runs/quickstart/diffusion "A Day at the Beach" \
        --candidates 4 --guidance 4
"""

from __future__ import annotations

import argparse

from sld import SLDPipeline

SOURCES = [
    "The Lost Dog",
    "A Rainy Day",
    "#Person1#: Can I help you?\n#Person2#: Yes, I'm looking for a red shirt.\n"
    "#Person1#: How about this one? It's 60 dollars.\n#Person2#: I think I'll look around a bit more.",
]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pipeline", nargs="?", default="runs/quickstart/diffusion", help="SLDPipeline folder")
    parser.add_argument("sources", nargs="*", default=SOURCES, help="titles or dialogues (default: examples)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--candidates", type=int, default=1, help="samples per source; MBR keeps one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)

    pipe = SLDPipeline.from_pretrained(args.pipeline, device=args.device)
    out = pipe(
        args.sources,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_candidates=args.candidates,
        seed=args.seed,
    )
    for source, segments in zip(args.sources, out.segments):
        print(f"[{source}]")
        for i, segment in enumerate(segments, 1):
            print(f"  {i}. {segment}")
    return out.texts


if __name__ == "__main__":
    main()
