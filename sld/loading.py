"""One way to open any saved folder: an autoencoder, an SLD pipeline or an AR baseline.

A folder says what it holds by its config file: ``autoencoder_config.json`` (``sld
train-autoencoder``), ``pipeline_config.json`` (``sld train-diffusion``) or ``baseline_config.json``
(``sld train-baseline``). ``load_model`` reads which one is there and calls that class's own
``from_pretrained``; anything else is a ``UserError`` that names the folder and what it found.

    from sld.loading import load_model

    pipe = load_model("runs/quickstart/diffusion")           # an SLDPipeline
    autoencoder = load_model("runs/quickstart/autoencoder")  # a SegmentAutoencoder
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

import torch

from sld.errors import UserError
from sld.models import autoencoder as autoencoder_module
from sld.models import baseline as baseline_module
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.baseline import BaselineModel
from sld.pipeline import PIPELINE_CONFIG, SLDPipeline

ModelKind = Literal["autoencoder", "pipeline", "baseline"]
SavedModel = SegmentAutoencoder | SLDPipeline | BaselineModel

# kind -> (config file that marks the folder, what to call it in messages, the stage that writes it)
FOLDER_KINDS: dict[str, tuple[str, str, str]] = {
    "pipeline": (PIPELINE_CONFIG, "an SLD pipeline", "sld train-diffusion"),
    "autoencoder": (autoencoder_module.CONFIG_NAME, "a segment autoencoder", "sld train-autoencoder"),
    "baseline": (baseline_module.CONFIG_NAME, "an AR baseline", "sld train-baseline"),
}


def default_device(device: str | torch.device | None = None) -> str | torch.device:
    """``device`` as given, or ``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The dtype to cast a loaded model to, or None for no cast.

    Saved folders hold float32 weights, so ``"float32"`` means no cast (casting a diffusers model to
    its own dtype only warns). Names are torch's: ``"bfloat16"``, ``"float16"``.
    """
    if isinstance(dtype, str):
        found = getattr(torch, dtype, None)
        if not isinstance(found, torch.dtype):
            raise UserError(f"dtype={dtype!r} is not a torch dtype (float32, bfloat16, float16)")
        dtype = found
    return None if dtype in (None, torch.float32) else dtype


def _describe(kinds: Collection[str]) -> str:
    return " or ".join(f"{FOLDER_KINDS[k][1]} folder ({FOLDER_KINDS[k][0]})" for k in kinds)


def folder_kind(folder: str | Path, kinds: Collection[ModelKind] | None = None, what: str = "") -> ModelKind:
    """Which saved model ``folder`` holds, told by its config file.

    Args:
        folder: a folder written by ``save_pretrained`` (or by the stage that trains the model).
        kinds: the kinds the caller can use (default: all three); another kind is an error.
        what: the config key that named the folder (``"model"``), so the message points at it.

    Raises:
        UserError: the folder is missing, holds none (or more than one) of the config files, or
            holds a kind outside ``kinds``; the message names the folder and what it found.
    """
    allowed = list(kinds) if kinds is not None else list(FOLDER_KINDS)
    unknown = [k for k in allowed if k not in FOLDER_KINDS]
    if unknown:
        raise ValueError(f"unknown model kinds {unknown}; choose from {list(FOLDER_KINDS)}")
    folder = Path(folder)
    where = f"{what}={str(folder)!r}" if what else str(folder)
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"{where} {state}: expected {_describe(allowed)}")
    found = [kind for kind, (name, _, _) in FOLDER_KINDS.items() if (folder / name).is_file()]
    if len(found) > 1:
        names = ", ".join(FOLDER_KINDS[k][0] for k in found)
        raise UserError(f"{where} holds several model configs ({names}): one saved model per folder")
    if not found:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        listing = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)" if len(entries) > 12 else "")
        hint = "; ".join(f"`{FOLDER_KINDS[k][2]}` writes {FOLDER_KINDS[k][1]}" for k in allowed)
        raise UserError(
            f"{where} is not a saved model folder: expected {_describe(allowed)}, "
            f"found {listing or 'an empty folder'} ({hint})"
        )
    kind = found[0]
    if kind not in allowed:
        raise UserError(f"{where} is {_describe([kind])}; this needs {_describe(allowed)}")
    return kind  # type: ignore[return-value]


def load_model(
    folder: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kinds: Collection[ModelKind] | None = None,
    what: str = "",
) -> SavedModel:
    """Open a saved autoencoder, SLD pipeline or AR baseline folder, in eval mode.

    Args:
        folder: the saved folder; its kind comes from its config file (see ``folder_kind``).
        device: where to put the model (default: ``"cuda"`` when available, else ``"cpu"``).
        dtype: cast to this dtype (a ``torch.dtype`` or its name); None or float32: no cast.
        kinds / what: restrict the kinds accepted, and name the config key in error messages.

    Returns:
        ``SegmentAutoencoder``, ``SLDPipeline`` or ``BaselineModel``, loaded by its ``from_pretrained``.
    """
    kind = folder_kind(folder, kinds, what)
    device, cast = default_device(device), resolve_dtype(dtype)
    if kind == "pipeline":
        return SLDPipeline.from_pretrained(folder, device=device, dtype=cast)
    if kind == "autoencoder":
        return SegmentAutoencoder.from_pretrained(folder, device=device, dtype=cast).eval()
    return BaselineModel.from_pretrained(folder, device=device, dtype=cast).eval()
