"""sld: segment-level latent diffusion for long-form text generation.

The library behind the ``sld`` command. Stages talk only through saved folders:

1. ``sld segment``            raw JSONL -> segmented dataset (``stages/segment.py``)
2. ``sld train-autoencoder``  segments -> ``SegmentAutoencoder`` folder (``stages/train_autoencoder.py``)
3. ``sld train-diffusion``    segmented documents + autoencoder -> ``SLDPipeline`` folder
"""

__version__ = "0.1.0"
