"""Shared fixtures: small raw-data files in the formats of the real data, and a small synthetic corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sld.data.synthetic import write_synthetic_corpus

STORIES = [
    {
        "title": "The Lost Dog",
        "text": 'Mr. Smith lost his dog. He looked everywhere. "Rex!" he shouted. Dr. Lee found him in the U.S. park. Mr. Smith was happy.',
    },
    {
        "title": None,
        "text": "Anna baked a cake. It burned. She tried again... and it worked. Her family loved it. She was proud.",
    },
    {
        "title": "Snow",
        "text": "It snowed all night. School was closed. Tom built a snowman. His sister helped. They had fun.",
    },
]


def write_jsonl_lines(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def stories_file(tmp_path: Path) -> Path:
    """A three-story ROCStories-like file (one story without a title)."""
    return write_jsonl_lines(tmp_path / "stories.jsonl", STORIES)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus (seed 0) shared by the whole session; treat it as read-only."""
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_corpus(
        out,
        seed=0,
        stories_train=300,
        stories_valid=40,
        dialogues_train=200,
        dialogues_valid=30,
        pairs_train=100,
        pairs_valid=30,
    )
    return out
