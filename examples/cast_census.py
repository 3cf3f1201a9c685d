"""Count the dtype casts of one autoencoder training step under bfloat16 autocast, on the CPU.

    python examples/cast_census.py -c configs/autoencoder_roc.yaml data.segmented_dir=runs/roc/segmented_all \\
        data.pairs_train=../shared/data/roc/pairs_train.jsonl [--rows 64] [--documents 400] [--top 12]

On the H200 a step of the ROC profile spent a fifth of its GPU time in ``aten::copy_`` (casts between
float32 and bfloat16: docs/results.md, fifteenth session). This builds the model of a training config
(its encoder-state cache when the config has one), takes ``--rows`` training rows of its first
``--documents`` documents, runs the step's losses under CPU autocast and their backward pass, and
prints how many aten operations and casts (``_to_copy`` / ``copy_`` between dtypes) each pass made
(the batch collated as the trainer collates it, ``sld.autoencoder_trainer.training_collator``),
the forward's operations by part of the step (encoder and compressor, reconstructor, decoder passes,
the adversarial term's latent gradient; calls of each),
the casts by (source dtype -> target dtype, shape), and for the three most frequent where in sld's
code they were made. CPU autocast casts some operators otherwise than CUDA's (attention, for one), so
the counts are a map of where to look, not the GPU's own.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

CASTS = (torch.ops.aten._to_copy, torch.ops.aten.copy_)


Cast = tuple[str, str, tuple[int, ...]]  # (source dtype, target dtype, source shape)


class CastCensus(TorchDispatchMode):
    """Counts every aten op, and every cast by ``Cast`` with the sld source lines that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.phases = ["rest"]  # the innermost phase running (``phase``), whose ops ``by_phase`` counts
        self.by_phase: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.ops: collections.Counter[str] = collections.Counter()
        self.casts: collections.Counter[Cast] = collections.Counter()
        self.where: dict[Cast, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[func.overloadpacket.__name__] += 1
        self.by_phase[self.phases[-1]] += 1
        if func.overloadpacket in CASTS:
            source = args[0] if func.overloadpacket is torch.ops.aten._to_copy else args[1]
            target = kwargs.get("dtype") if func.overloadpacket is torch.ops.aten._to_copy else args[0].dtype
            if target is not None and target != source.dtype:
                cast = (str(source.dtype), str(target), tuple(source.shape))
                self.casts[cast] += 1
                frames = [f for f in traceback.extract_stack() if "/sld/" in f.filename][-2:]
                made = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
                self.where[cast][made or "the autograd engine (no sld frame)"] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def phases(model: torch.nn.Module, census: CastCensus) -> Iterator[None]:
    """Attribute the census's ops to the parts of the step: the encoder and compressor (``encode``),
    the reconstructor (``memory``), the decoder passes, the adversarial term's latent gradient."""
    import sld.autoencoder_objective as objective

    def phase(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            census.calls[name] += 1
            census.phases.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                census.phases.pop()

        return counted

    parts = {
        "encode": "encode",
        "memory": "reconstructor",
        "_decoder_hidden": "decoder",
        "_decoder_logits": "decoder",
    }
    parts = {method: name for method, name in parts.items() if hasattr(model, method)}  # older sld: fewer
    for method, name in parts.items():
        setattr(model, method, phase(name, getattr(model, method)))
    latent_gradient = objective._latent_gradient
    objective._latent_gradient = phase("latent gradient", latent_gradient)
    try:
        yield
    finally:
        objective._latent_gradient = latent_gradient
        for method in parts:
            delattr(model, method)  # the instance attributes set above: the class's methods again


def one_step(config: str, overrides: list[str], rows: int, documents: int) -> tuple[CastCensus, CastCensus]:
    """(forward census, backward census) of one training step's losses of ``config``."""
    from sld.autoencoder_objective import autoencoder_losses
    from sld.autoencoder_trainer import AutoencoderTrainingConfig, sample_training_batch
    from sld.config import load_config

    cfg = load_config(AutoencoderTrainingConfig, config, overrides)
    work_dir = Path(tempfile.mkdtemp(prefix="cast_census_"))
    model, batch = sample_training_batch(cfg, documents, rows, work_dir)
    forward = CastCensus()
    with forward, phases(model, forward), torch.autocast("cpu", dtype=torch.bfloat16):
        terms = autoencoder_losses(model, batch, cfg.losses, training=True)
    with CastCensus() as backward:
        terms["loss"].backward()
    return forward, backward


def report(name: str, census: CastCensus, top: int) -> list[str]:
    lines = [f"{name}: {sum(census.ops.values())} aten ops, {sum(census.casts.values())} casts"]
    if census.calls:
        lines.append(
            "  by part: "
            + ", ".join(
                f"{part} {count} ({census.calls[part]} calls)" if part in census.calls else f"{part} {count}"
                for part, count in census.by_phase.most_common()
            )
        )
    for (source, target, shape), count in census.casts.most_common(top):
        lines.append(f"  {count:5d} x {source} -> {target} {list(shape)}")
    made: collections.Counter[str] = collections.Counter()
    for cast, _ in census.casts.most_common(3):  # where the three most frequent kinds were made
        made.update(census.where[cast])
    for where, count in made.most_common(top):
        lines.append(f"  {count:5d} x made at {where}")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="an autoencoder training config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument(
        "--documents", type=int, default=400, help="training documents to build the model from"
    )
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    forward, backward = one_step(args.config, args.overrides, args.rows, args.documents)
    lines = report("forward", forward, args.top) + report("backward", backward, args.top)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
