"""Topic agreement: does each generated segment read like training text of its input's topic?

For corpora whose documents carry a topic label (the synthetic corpus labels every story and
dialogue). Each generated segment takes the label of its nearest training segment by word-set
Jaccard similarity; the agreement is the share of generated segments whose label is their input's
label. ``chance`` is what segments drawn at random from the training set would score (the share of
training segments carrying each input's label, averaged over the generated segments), and the
references themselves score close to 1, so the number sits on a readable scale. ROUGE against one
reference cannot say this: a story that follows its title with other events than the reference's
scores low on ROUGE but high here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import torch

_WORD = re.compile(r"[a-z0-9']+")


def word_sets(texts: Sequence[str], vocabulary: dict[str, int]) -> torch.Tensor:
    """(len(texts), len(vocabulary)) 0/1 matrix of which known words each text contains."""
    rows = torch.zeros(len(texts), len(vocabulary))
    for i, text in enumerate(texts):
        ids = [vocabulary[w] for w in set(_WORD.findall(text.lower())) if w in vocabulary]
        rows[i, ids] = 1.0
    return rows


def nearest_labels(
    queries: Sequence[str], corpus: Sequence[str], corpus_labels: Sequence[str], chunk: int = 1024
) -> list[str]:
    """The label of the most Jaccard-similar corpus text for each query (ties: the first).

    Words the corpus never uses count in a query's union but match nothing.
    """
    if len(corpus) != len(corpus_labels) or not corpus:
        raise ValueError(
            f"need a non-empty corpus with one label per text, got {len(corpus)} / {len(corpus_labels)}"
        )
    vocabulary: dict[str, int] = {}
    for text in corpus:
        for word in _WORD.findall(text.lower()):
            vocabulary.setdefault(word, len(vocabulary))
    corpus_sets = word_sets(corpus, vocabulary)  # (C, V)
    corpus_sizes = corpus_sets.sum(dim=1)  # (C,)
    labels = []
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        query_sets = word_sets(part, vocabulary)  # (Q, V)
        query_sizes = torch.tensor([float(len(set(_WORD.findall(q.lower())))) for q in part])
        shared = query_sets @ corpus_sets.T  # (Q, C)
        union = (query_sizes[:, None] + corpus_sizes[None, :] - shared).clamp_min(1.0)
        best = (shared / union).argmax(dim=1)
        labels.extend(corpus_labels[int(i)] for i in best)
    return labels


def topic_agreement(
    generated: Sequence[Sequence[str]],
    labels: Sequence[str],
    train_segments: Sequence[str],
    train_labels: Sequence[str],
) -> dict[str, float | list[float] | int]:
    """Share of generated segments whose nearest training segment has their input's label.

    Args:
        generated: the segments of each generated document.
        labels: each document's topic label (one per entry of ``generated``).
        train_segments / train_labels: the labelled training segments to compare against.

    Returns ``agreement``, ``chance``, ``by_position`` (agreement of the 1st, 2nd, ... segment)
    and ``num_segments``.
    """
    if len(generated) != len(labels):
        raise ValueError(f"{len(generated)} generated documents but {len(labels)} labels")
    flat = [
        (segment, label, position)
        for doc, label in zip(generated, labels)
        for position, segment in enumerate(doc)
    ]
    if not flat:
        raise ValueError("no generated segments to score")
    found = nearest_labels([s for s, _, _ in flat], train_segments, train_labels)
    hits = [f == label for f, (_, label, _) in zip(found, flat)]
    share = Counter(train_labels)
    chance = sum(share[label] for _, label, _ in flat) / (len(train_labels) * len(flat))
    by_position = []
    for position in range(max(p for _, _, p in flat) + 1):
        at = [h for h, (_, _, p) in zip(hits, flat) if p == position]
        by_position.append(sum(at) / len(at))
    return {
        "agreement": sum(hits) / len(hits),
        "chance": chance,
        "by_position": by_position,
        "num_segments": len(flat),
    }
