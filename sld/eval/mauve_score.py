"""MAUVE (Pillutla et al., NeurIPS 2021) between generated and reference texts, on sentence features.

MAUVE compares two distributions of texts: both sets are embedded, jointly reduced with PCA,
quantised with k-means into ``num_buckets`` clusters (``"auto"`` = one per 10 texts of the smaller
set), and the area under the divergence frontier of the two cluster histograms is the score
(0-1, higher = the generated set is closer to the references). The features here come from a
sentence-transformers model (``sld.eval.semantic``) because no GPT-2 large is at hand offline
(method.md, "Metrics used here"); scores are therefore comparable only with MAUVE computed on the
same features. LD4LG's 0.716 on ROCStories used GPT-2 large features.

It is an optional extra: ``pip install -e .[eval]`` (``mauve-text`` + ``faiss-cpu``). When it is
missing the score is skipped with a logged message and reported as "n/a", never as a number.

Sample size and seeding: with fewer than ``MIN_SAMPLES`` texts on either side there are too few
points per cluster and the score is skipped. MAUVE is noisy on small sets; its authors recommend
a few thousand texts per side, so treat scores from a few hundred as rough and compare systems
only at equal sample sizes and the same seed. ``seed`` fixes PCA and the k-means initialisation, so
the same inputs give the same score.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

MIN_SAMPLES = 20
"""Fewest texts per side for a MAUVE score (two k-means buckets of ten texts)."""

RECOMMENDED_SAMPLES = 1000
"""Below this many texts per side a warning says the score is high-variance."""

INSTALL_HINT = "pip install -e .[eval]"

STATUS_OK = "ok"
STATUS_DISABLED = "disabled"
STATUS_NOT_INSTALLED = "not installed"
STATUS_TOO_FEW = "too few samples"


def mauve_available() -> bool:
    """Whether ``mauve-text`` and its ``faiss`` dependency can be imported."""
    return importlib.util.find_spec("mauve") is not None and importlib.util.find_spec("faiss") is not None


def _skip_reason(num_p: int, num_q: int) -> str | None:
    """Why MAUVE cannot run on sets of these sizes (logged), or ``None`` when it can."""
    if not mauve_available():
        logger.warning(
            "MAUVE skipped: the optional packages mauve-text and faiss-cpu are not installed (%s)",
            INSTALL_HINT,
        )
        return STATUS_NOT_INSTALLED
    n = min(num_p, num_q)
    if n < MIN_SAMPLES:
        logger.warning("MAUVE skipped: %d texts on the smaller side; it needs at least %d", n, MIN_SAMPLES)
        return STATUS_TOO_FEW
    if n < RECOMMENDED_SAMPLES:
        logger.info("MAUVE on %d texts per side is high-variance; compare systems only at equal sizes", n)
    return None


def mauve_from_features(
    p_features: np.ndarray,
    q_features: np.ndarray,
    seed: int = 25,
    num_buckets: int | str = "auto",
    scaling_factor: float = 5.0,
) -> tuple[float | None, str]:
    """MAUVE between feature sets ``p`` (generated, (n, d)) and ``q`` (references, (m, d)).

    Returns ``(score, status)``: ``score`` is ``None`` when the status is not ``"ok"``
    (``"not installed"`` or ``"too few samples"``), with a logged message saying why.
    """
    reason = _skip_reason(len(p_features), len(q_features))
    if reason is not None:
        return None, reason
    import mauve

    out = mauve.compute_mauve(
        p_features=np.asarray(p_features, dtype=np.float32),
        q_features=np.asarray(q_features, dtype=np.float32),
        num_buckets=num_buckets,
        mauve_scaling_factor=scaling_factor,
        seed=seed,
        verbose=False,
    )
    if np.array_equal(out.p_hist, out.q_hist):
        # Equal histograms collapse the divergence curve onto the point (1, 1), whose area is 1, but
        # mauve-text's tie-broken sort of that degenerate curve returns 0.5-1 (0.75 seen here).
        return 1.0, STATUS_OK
    return float(out.mauve), STATUS_OK


def mauve_score(
    predictions: Sequence[str],
    references: Sequence[str],
    embedder: object,
    seed: int = 25,
    num_buckets: int | str = "auto",
) -> tuple[float | None, str]:
    """MAUVE between generated texts and reference texts embedded with ``embedder``.

    ``embedder`` is a ``sld.eval.semantic.SentenceEmbedder`` (anything with ``embed(texts) -> array``).
    Returns ``(score, status)`` as ``mauve_from_features``; nothing is embedded when MAUVE cannot run.
    """
    reason = _skip_reason(len(predictions), len(references))
    if reason is not None:
        return None, reason
    p = embedder.embed(list(predictions))  # type: ignore[attr-defined]
    q = embedder.embed(list(references))  # type: ignore[attr-defined]
    return mauve_from_features(p, q, seed=seed, num_buckets=num_buckets)


__all__ = [
    "INSTALL_HINT",
    "MIN_SAMPLES",
    "RECOMMENDED_SAMPLES",
    "mauve_available",
    "mauve_from_features",
    "mauve_score",
]
