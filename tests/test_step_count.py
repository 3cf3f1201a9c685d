"""Fewest sampling steps: the finding on made-up scores, the paired difference, the report files, and
the whole run on a stand-in pipeline whose quality depends on the step count."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sld.data.segmented import SegmentedDocument
from sld.eval.benchmark import SamplerSetting
from sld.eval.decoding_rules import DecodingRules
from sld.eval.step_count import (
    StepsConfig,
    fewest_steps,
    paired_difference,
    run_steps,
    steps_markdown,
    write_steps_report,
)
from sld.pipeline import SLDOutput


def rows(scores: dict[str, dict[int, float]]) -> list[dict]:
    return [
        {"scheduler": s, "steps": n, "rougeL": r}
        for s, by_steps in scores.items()
        for n, r in by_steps.items()
    ]


def test_fewest_steps_within_the_tolerance():
    made_up = rows({"dpm++": {5: 15.5, 10: 16.2, 15: 16.9}, "ddim": {5: 14.0, 10: 15.9, 15: 16.1, 25: 16.6}})
    finding = fewest_steps(made_up, 17.0, 1.0)
    assert finding["threshold"] == pytest.approx(16.0)
    assert finding["per_scheduler"] == {"dpm++": 10, "ddim": 15}
    assert finding["fewest"] == {"scheduler": "dpm++", "steps": 10, "rougeL": 16.2}
    # exactly at the threshold qualifies; a stricter tolerance moves the answer
    assert fewest_steps(rows({"ddim": {10: 16.0}}), 17.0, 1.0)["per_scheduler"] == {"ddim": 10}
    assert fewest_steps(made_up, 17.0, 0.5)["fewest"]["steps"] == 15
    # nothing close enough
    finding = fewest_steps(made_up, 20.0, 1.0)
    assert finding["fewest"] is None and finding["per_scheduler"] == {"dpm++": None, "ddim": None}
    # better than the reference counts too; a tie in steps goes to the higher ROUGE-L
    finding = fewest_steps(rows({"dpm++": {10: 16.1}, "ddim": {10: 18.5}}), 17.0, 1.0)
    assert finding["fewest"]["scheduler"] == "ddim"


def test_paired_difference():
    mean, se = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert mean == pytest.approx(2.0) and se == pytest.approx(1.0 / math.sqrt(3))
    assert paired_difference([2.0], [1.0]) == (1.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


class StepDependentPipe:
    """Stands in for an SLDPipeline: writes the reference text when given at least 10 steps, else a
    text that shares half of it."""

    def __init__(self, docs):
        self.answers = {doc.source: " ".join(doc.segments) for doc in docs}
        self.calls = []

    def __call__(self, sources, num_inference_steps, scheduler, **kwargs):
        self.calls.append((scheduler, num_inference_steps, len(sources)))
        texts = [
            self.answers[s] if num_inference_steps >= 10 else self.answers[s].split(".")[0] + "."
            for s in sources
        ]
        return SLDOutput(texts, [[t] for t in texts], [1] * len(texts))


def test_run_steps_on_a_stand_in_pipeline(tmp_path):
    docs = [
        SegmentedDocument(f"d{i}", f"source {i}", [f"Sentence {i} one.", f"And {i} two."], 2)
        for i in range(6)
    ]
    pipe = StepDependentPipe(docs)
    cfg = StepsConfig(
        schedulers=["dpm++", "ddim"],
        counts=[10, 5],
        reference=SamplerSetting("ddpm", 20),
        num_documents=5,
        batch_size=2,
    )
    rules = DecodingRules(0, None, None, "test")
    report = run_steps(cfg, pipe, docs, rules, torch.device("cpu"))
    # warm-up on one batch, the reference, then every scheduler at every count (sorted)
    assert pipe.calls == [
        ("dpm++", 5, 2),
        ("ddpm", 20, 5),
        ("dpm++", 5, 5),
        ("dpm++", 10, 5),
        ("ddim", 5, 5),
        ("ddim", 10, 5),
    ]
    assert report["num_documents"] == 5 and report["reference"]["rougeL"] == pytest.approx(100.0)
    by_setting = {(r["scheduler"], r["steps"]): r for r in report["rows"]}
    assert (
        by_setting[("dpm++", 10)]["rougeL"] == pytest.approx(100.0)
        and by_setting[("dpm++", 10)]["delta"] == 0
    )
    assert by_setting[("ddim", 5)]["rougeL"] < 99 and by_setting[("ddim", 5)]["delta"] < 0
    assert report["finding"]["per_scheduler"] == {"dpm++": 10, "ddim": 10}
    assert report["finding"]["fewest"]["steps"] == 10

    markdown = write_steps_report(report, tmp_path, ["- header"])
    assert "**dpm++ 10**" in markdown and "- header" in markdown
    assert "smallest count tried" not in markdown  # 5 steps were tried and fell short
    saved = json.loads((tmp_path / "steps.json").read_text())
    assert set(saved) == {"num_documents", "reference", "tolerance", "rows", "finding"}
    assert {"scheduler", "steps", "rougeL", "delta", "delta_se", "seconds", "docs_per_second"} <= set(
        saved["rows"][0]
    )
    assert (tmp_path / "steps.png").is_file() and (tmp_path / "steps.svg").is_file()


def test_steps_config_checks():
    with pytest.raises(ValueError):
        StepsConfig(counts=[])
    with pytest.raises(ValueError):
        StepsConfig(counts=[0, 5])
    with pytest.raises(ValueError):
        StepsConfig(tolerance=-1)


def test_a_finding_at_the_smallest_count_tried_says_fewer_were_not_tried():
    scored = [
        {
            "scheduler": "ddim",
            "steps": n,
            "rougeL": r,
            "delta": r - 16.0,
            "delta_se": 0.3,
            "docs_per_second": 9.0,
        }
        for n, r in ((5, 16.5), (10, 16.4))
    ]
    report = {
        "reference": {"scheduler": "ddpm", "steps": 250, "rougeL": 16.0, "docs_per_second": 1.0},
        "num_documents": 4,
        "tolerance": 1.0,
        "rows": scored,
        "finding": fewest_steps(scored, 16.0, 1.0),
    }
    markdown = steps_markdown(report)
    assert "**ddim 5** (ROUGE-L 16.50) (the smallest count tried: fewer steps may be as good)" in markdown
