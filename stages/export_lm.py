"""Export a pretrained causal LM (e.g. the GGUF default ``smollm2``) to a plain transformers folder.

    sld export-lm name=smollm2 output_dir=/tmp/smollm2      # then SLD_SMOLLM2_PATH=/tmp/smollm2
    sld export-lm name=path/to/model.gguf output_dir=models/lm dtype=bfloat16

transformers de-quantises a GGUF file every time it loads it (20-50 s on a CPU). The exported folder
(``config.json``, ``model.safetensors``, tokenizer files) loads in about a second, through
``SLD_SMOLLM2_PATH`` or as ``model.decoder_name_or_path``. The weights are the de-quantised ones:
exporting changes nothing a model computes (float32), or rounds them once (bfloat16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sld.cli import run_stage
from sld.models.causal_lm import load_causal_lm
from sld.pretrained import SMOLLM2, resolve_language_model


@dataclass
class Config:
    name: str = SMOLLM2
    gguf_file: str | None = None
    output_dir: str = "models/smollm2"
    dtype: Literal["float32", "bfloat16"] = "float32"


def run(cfg: Config) -> Path:
    out = Path(cfg.output_dir)
    lm, tokenizer = load_causal_lm(
        resolve_language_model(cfg.name, cfg.gguf_file, option="name"), option="name"
    )
    lm.to(getattr(torch, cfg.dtype)).save_pretrained(out)
    tokenizer.save_pretrained(str(out))
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    params = sum(p.numel() for p in lm.parameters()) / 1e6
    print(f"exported {cfg.name} ({params:.1f}M parameters, {cfg.dtype}) to {out} ({size:.0f} MiB)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(Config, run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
