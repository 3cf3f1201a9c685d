"""sld: segment-level latent diffusion for long-form text generation.

The library behind the ``sld`` command. Stages talk only through saved folders:

1. ``sld segment``            raw JSONL -> segmented dataset (``stages/segment.py``)
2. ``sld train-autoencoder``  segments -> ``SegmentAutoencoder`` folder (``stages/train_autoencoder.py``)
3. ``sld train-diffusion``    segmented documents + autoencoder -> ``SLDPipeline`` folder

The public API, imported on first use (``import sld`` itself stays light)::

    from sld import SLDPipeline

    pipe = SLDPipeline.from_pretrained("runs/quickstart/diffusion")
    print(pipe(["The Lost Dog"]).texts[0])

``sld.load_model(folder)`` opens any saved folder (autoencoder, pipeline or AR baseline).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "SLDPipeline": "sld.pipeline",
    "PipelineConfig": "sld.pipeline",
    "SegmentAutoencoder": "sld.models.autoencoder",
    "SegmentDiT": "sld.models.denoiser",
    "BaselineModel": "sld.models.baseline",
    "load_model": "sld.loading",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sld' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
