"""Stage 1 end to end: `sld segment` through main(argv), through config objects, and its user errors."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import write_jsonl_lines

from sld import cli
from sld.config import load_config
from sld.data.records import RecordsConfig
from sld.data.segment import SegmenterConfig
from sld.data.segmented import read_segmented
from stages import segment as segment_stage
from stages import synthetic as synthetic_stage

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "segment_tiny.yaml")


def test_main_with_tiny_config(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "seg"
    argv = [
        "-c",
        TINY,
        f"splits.train={synthetic_dir / 'stories_train.jsonl'}",
        f"splits.valid={synthetic_dir / 'stories_valid.jsonl'}",
        f"output_dir={out}",
    ]
    assert segment_stage.main(argv) == 0
    assert {p.name for p in out.iterdir()} == {
        "train.jsonl",
        "valid.jsonl",
        "punkt_params.json",
        "stats.json",
        "config.yaml",
    }
    train = read_segmented(out / "train.jsonl")
    assert len(train) == 200  # records.limit in the tiny config
    assert all(doc.source and 4 <= len(doc.segments) == doc.num_segments <= 5 for doc in train)
    raw = json.loads((out / "train.jsonl").open().readline())
    assert list(raw) == ["id", "source", "segments", "num_segments"] and raw["id"] == "story-train-0"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["splits"]["train"]["documents"] == 200 and stats["segmenter"]["punkt_trained_on"] == "train"
    printed = capsys.readouterr().out
    assert "% of documents have exactly 5 sentences" in printed and "tokens/segment" in printed
    # the saved config reproduces the run; the saved Punkt model reproduces the segmentation
    cfg = load_config(
        segment_stage.Config,
        out / "config.yaml",
        [f"output_dir={tmp_path / 'again'}", f"segmenter.punkt_params={out / 'punkt_params.json'}"],
    )
    segment_stage.run(cfg)
    assert read_segmented(tmp_path / "again" / "valid.jsonl") == read_segmented(out / "valid.jsonl")


def test_run_with_config_objects_dialogues_and_turns(synthetic_dir, tmp_path):
    cfg = segment_stage.Config(
        splits={"train": str(synthetic_dir / "dialogues_train.jsonl")},
        output_dir=str(tmp_path / "summaries"),
        records=RecordsConfig(task="dialogue_summary", limit=50),
        segmenter=SegmenterConfig(max_segments=2),
    )
    stats = segment_stage.run(cfg)
    docs = read_segmented(tmp_path / "summaries" / "train.jsonl")
    assert len(docs) == 50 and all(d.source.startswith("#Person1#") for d in docs)
    assert stats["splits"]["train"]["truncated"] == sum(d.num_segments > 2 for d in docs)
    turns = segment_stage.run(
        segment_stage.Config(
            splits={"train": str(synthetic_dir / "dialogues_train.jsonl")},
            output_dir=str(tmp_path / "turns"),
            records=RecordsConfig(task="fields", target_field="dialogue", limit=20),
            segmenter=SegmenterConfig(kind="turn", max_segments=8),
        )
    )
    assert not (tmp_path / "turns" / "punkt_params.json").exists()
    docs = read_segmented(tmp_path / "turns" / "train.jsonl")
    assert all(d.source is None and d.segments[0].startswith("#Person1#: ") for d in docs)
    assert turns["splits"]["train"]["truncated"] == 0


def test_empty_targets_and_skipped_records_are_counted(tmp_path, capsys):
    path = write_jsonl_lines(
        tmp_path / "in.jsonl",
        [
            {"title": "A", "text": "One. Two."},
            {"title": None, "text": "x."},
            {"title": "B", "text": "  "},
            "{bad",
        ],
    )
    cfg = load_config(
        segment_stage.Config,
        TINY,
        [f"splits.train={path}", f"output_dir={tmp_path / 'out'}", "records.skip_bad_records=true"],
    )
    stats = segment_stage.run(cfg)["splits"]["train"]
    assert stats["documents"] == 1 and stats["empty"] == 1
    assert stats["records"]["skipped"] == {
        "null 'title'": 1,
        "bad record: not valid JSON (Expecting property name enclosed in double quotes at column 2)": 1,
    }
    assert "skipped        1 (null 'title'; e.g. lines 2)" in capsys.readouterr().out


def _cli(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip()


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    code, err = _cli(
        ["segment", "-c", TINY, f"splits.train={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path}"],
        capsys,
    )
    assert code == 2 and err.startswith("error: input file for split 'train' not found") and "\n" not in err
    bad = write_jsonl_lines(tmp_path / "bad.jsonl", [{"title": "A", "text": "One."}, "{nope"])
    code, err = _cli(["segment", "-c", TINY, f"splits.train={bad}", f"output_dir={tmp_path / 'o'}"], capsys)
    assert code == 2 and "bad.jsonl, line 2: not valid JSON" in err and "\n" not in err
    code, err = _cli(
        ["segment", "-c", TINY, f"splits.train={bad}", "output_dir=x", "segmenter.colour=red"], capsys
    )
    assert code == 2 and "unknown key 'segmenter.colour'" in err
    code, err = _cli(["segment", "-c", TINY, "output_dir=x"], capsys)
    assert code == 2 and "missing required key(s): splits" in err


def test_configs_parse():
    for path in sorted((ROOT / "configs").glob("segment_*.yaml")):
        cfg = load_config(segment_stage.Config, path, ["splits.train=x.jsonl", "output_dir=y"])
        assert cfg.segmenter.max_segments == 5, path
        assert yaml.safe_load(path.read_text())["records"]["task"] == cfg.records.task


def test_synthetic_stage(tmp_path, capsys):
    argv = [
        f"output_dir={tmp_path}",
        "seed=3",
        "stories_train=20",
        "stories_valid=5",
        "dialogues_train=5",
        "dialogues_valid=5",
        "pairs_train=10",
        "pairs_valid=5",
    ]
    assert synthetic_stage.main(argv) == 0
    assert len((tmp_path / "stories_train.jsonl").read_text().splitlines()) == 20
    assert (tmp_path / "config.yaml").exists() and "pairs_valid" in capsys.readouterr().out
    assert synthetic_stage.main([f"output_dir={tmp_path}", "stories_train=-1"]) == 2


def test_long_documents_and_segments_are_counted_and_reported(tmp_path, capsys):
    long_story = " ".join(["He waited for the bus."] * 300)
    rambling = "It went on " + " and on" * 80 + "."
    path = write_jsonl_lines(
        tmp_path / "in.jsonl",
        [{"title": "Birds", "text": long_story}, {"title": "Talk", "text": rambling + " The end."}],
    )
    cfg = load_config(
        segment_stage.Config,
        TINY,
        [f"splits.train={path}", f"output_dir={tmp_path / 'out'}", "segmenter.long_segment_words=100"],
    )
    split = segment_stage.run(cfg)["splits"]["train"]
    assert split["truncated"] == 1 and split["segments_per_document"]["300"] == 1
    assert split["long_segments"] == {"words": 100, "segments": 1, "documents": ["in-2"]}
    assert "long           1 segments of more than 100 words (e.g. in-2)" in capsys.readouterr().out
    docs = read_segmented(tmp_path / "out" / "train.jsonl")
    assert docs[0].num_segments == 300 and len(docs[0].segments) == 5


def test_a_split_without_any_usable_record_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    untitled = write_jsonl_lines(tmp_path / "untitled.jsonl", [{"title": None, "text": "One. Two."}])
    code, err = _cli(["segment", "-c", TINY, f"splits.train={empty}", f"output_dir={tmp_path / 'a'}"], capsys)
    assert code == 2 and "empty.jsonl: the file is empty" in err
    code, err = _cli(
        ["segment", "-c", TINY, f"splits.train={untitled}", f"output_dir={tmp_path / 'b'}"], capsys
    )
    assert code == 2 and "untitled.jsonl: no document to write for split 'train'" in err
    assert "skipped 1 (null 'title'; lines 1)" in err
