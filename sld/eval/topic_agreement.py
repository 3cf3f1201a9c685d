"""Topic agreement: does each generated segment read like training text of its input's topic?

For corpora whose documents carry a topic label (the synthetic corpus labels every story and
dialogue). Each generated segment takes the label of its nearest training segment by word-set
Jaccard similarity; the agreement is the share of generated segments whose label is their input's
label. ``chance`` is what segments drawn at random from the training set would score (the share of
training segments carrying each input's label, averaged over the generated segments), and the
references themselves score close to 1, so the number sits on a readable scale. ROUGE against one
reference cannot say this: a story that follows its title with other events than the reference's
scores low on ROUGE but high here.

``score_topics`` applies it to ``sld generate`` rows of a labelled corpus on disk (as the
quickstart does): topics from the corpus files, training segments from the stage-1 folder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sld.data.segmented import read_segmented
from sld.eval.metrics import repeated_segment_rate

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


def score_topics(
    rows: Sequence[Mapping[str, Any]], topic_files: Sequence[str | Path], segmented: str | Path
) -> dict[str, Any]:
    """Topic agreement of generated documents and of their references, and their repeated segments.

    Args:
        rows: ``sld generate`` output rows (``id``, ``segments``) of documents of ``segmented``'s
            ``valid.jsonl``.
        topic_files: JSONL files with ``id`` and ``topic`` of every document (e.g. the synthetic
            corpus' train and valid files).
        segmented: the stage-1 folder: its ``train.jsonl`` segments are the labelled training text,
            its ``valid.jsonl`` segments the references.

    Returns ``num_documents``, ``repeated_segments`` (``repeated_segment_rate`` of the generated
    documents) and ``generated`` / ``references``: ``topic_agreement`` of each.
    """
    topics = {}
    for path in topic_files:
        topics.update((r["id"], r["topic"]) for r in map(json.loads, Path(path).read_text().splitlines()))
    segmented = Path(segmented)
    train_segments, train_labels = [], []
    for doc in read_segmented(segmented / "train.jsonl"):
        train_segments += doc.segments
        train_labels += [topics[doc.id]] * len(doc.segments)
    references = {doc.id: doc.segments for doc in read_segmented(segmented / "valid.jsonl")}
    labels = [topics[row["id"]] for row in rows]
    generated = [row["segments"] for row in rows]
    return {
        "num_documents": len(rows),
        "repeated_segments": repeated_segment_rate(generated),
        "generated": topic_agreement(generated, labels, train_segments, train_labels),
        "references": topic_agreement(
            [references[row["id"]] for row in rows], labels, train_segments, train_labels
        ),
    }


def format_topic_scores(scores: Mapping[str, Any]) -> str:
    """One line of ``score_topics``' result: agreement of generated text, of references, chance."""
    return (
        f"generated {scores['generated']['agreement']:.2f}   "
        f"references {scores['references']['agreement']:.2f}   chance {scores['generated']['chance']:.2f}   "
        f"({scores['num_documents']} inputs; {scores['repeated_segments']:.0%} of generated sentences repeat an "
        "earlier one of their text)"
    )
