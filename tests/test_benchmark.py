"""`sld benchmark`: the bookkeeping on made-up timings (the AR reference, ratios, table rows, plot),
the timing harness on a fake generator, and the stage end to end on a tiny SLD pipeline and a tiny
AR baseline on CPU (every mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_systems import save_tiny_systems, write_stories

from sld.data.segmented import SegmentedDocument, write_segmented
from sld.eval.benchmark import (
    AR,
    SLD,
    DecodingSetting,
    Measurement,
    SamplerSetting,
    add_speed_ratios,
    aggregate_timings,
    ar_quality_by_setting,
    benchmark_rows,
    choose_ar_reference,
    markdown_table,
    plot_quality_vs_speed,
    reference_summary,
    summarize,
    token_step,
    token_step_mismatch,
    write_speed_report,
)
from sld.eval.timing import MEMORY_NA
from sld.viz.figures import save_figure


def fake_measurements() -> list[Measurement]:
    split = {"context": 0.1, "denoise": 0.6, "decode": 0.3}
    return [
        Measurement(
            AR, "greedy", 4, 8, seconds=[2.0, 2.2, 1.8], quality={"rougeL": 20.0, "num_distinct_outputs": 8}
        ),
        Measurement(AR, "beam 4", 4, 8, seconds=[4.0], quality={"rougeL": 20.5}),
        Measurement(SLD, "dpm++ 10", 4, 8, seconds=[1.0], parts=[split], steps=10),
        Measurement(SLD, "dpm++ 10", 8, 8, seconds=[0.5], parts=[split], steps=10),
    ]


def row(system: str, setting: str, batch: int, docs_per_second: float, rouge_l: float | None, docs: int = 64):
    """A made-up summarized row."""
    return {
        "system": system,
        "setting": setting,
        "batch_size": batch,
        "num_documents": docs,
        "docs_per_second": docs_per_second,
        "rougeL": rouge_l,
    }


def test_aggregate_timings_median_and_mean_parts():
    out = aggregate_timings(
        [3.0, 1.0, 2.0], [{"denoise": 1.0, "decode": 0.5}, {"denoise": 3.0, "decode": 0.5}]
    )
    assert out == {"seconds": 2.0, "seconds_min": 1.0, "seconds_max": 3.0, "decode": 0.5, "denoise": 2.0}
    with pytest.raises(ValueError):
        aggregate_timings([])


def test_summarize_throughput_latency_and_split():
    ar, _, sld, _ = fake_measurements()
    r = summarize(ar)
    assert r["seconds"] == 2.0 and r["docs_per_second"] == pytest.approx(4.0)
    assert r["ms_per_document"] == pytest.approx(250.0) and r["seconds_per_batch"] == pytest.approx(1.0)
    assert r["num_batches"] == 2 and r["ms_per_step"] is None and r["rougeL"] == 20.0
    r = summarize(sld)
    assert r["denoise_seconds"] == pytest.approx(0.6) and r["denoise_share"] == pytest.approx(0.6)
    assert r["context_share"] == pytest.approx(0.1) and r["decode_share"] == pytest.approx(0.3)
    # 0.6 s of denoising over 10 steps x 2 batches
    assert r["ms_per_step"] == pytest.approx(30.0)


def test_ar_reference_is_the_fastest_setting_within_the_tolerance_of_the_best():
    # The table: greedy 17.4 (48 docs/s), beam 4 17.5 (81 docs/s): both qualify, beam is faster.
    rows = [
        row(AR, "greedy", 64, 48.3, 17.4),
        row(AR, "beam 4", 64, 81.1, 17.5),
        row(SLD, "dpm++ 10", 64, 96.6, 16.3),
    ]
    assert choose_ar_reference(rows, 1.0) == {64: "beam 4"}
    # A faster setting more than 1 point below the best is not comparable: the slower best one is.
    rows = [row(AR, "greedy", 64, 90.0, 15.0), row(AR, "beam 4", 64, 30.0, 17.5)]
    assert choose_ar_reference(rows, 1.0) == {64: "beam 4"}
    # Exactly at the tolerance still qualifies; with a smaller tolerance it does not.
    rows = [row(AR, "greedy", 64, 90.0, 16.5), row(AR, "beam 4", 64, 30.0, 17.5)]
    assert choose_ar_reference(rows, 1.0) == {64: "greedy"}
    assert choose_ar_reference(rows, 0.5) == {64: "beam 4"}
    assert choose_ar_reference([row(SLD, "dpm++ 10", 64, 9.0, 16.0)]) == {}


def test_ar_reference_quality_comes_from_the_largest_cell_and_speed_from_each_batch_size():
    rows = [
        # batch 1 sees 8 documents only: its ROUGE-L (noisy) is not used to judge the setting
        row(AR, "greedy", 1, 5.0, 30.0, docs=8),
        row(AR, "beam 4", 1, 2.0, 10.0, docs=8),
        row(AR, "greedy", 16, 40.0, 17.4, docs=256),
        row(AR, "beam 4", 16, 30.0, 17.5, docs=256),
        row(AR, "greedy", 64, 48.0, 17.4, docs=256),
        row(AR, "beam 4", 64, 81.0, 17.5, docs=256),
    ]
    assert ar_quality_by_setting(rows) == {"greedy": 17.4, "beam 4": 17.5}
    assert choose_ar_reference(rows) == {1: "greedy", 16: "greedy", 64: "beam 4"}


def test_speed_ratios_against_the_reference_at_the_same_batch_size():
    rows, references = benchmark_rows(fake_measurements(), tolerance=1.0)
    assert references == {4: "greedy"}  # greedy 20.0 is within 1 of beam 20.5 and twice as fast
    ratios = {(r["system"], r["setting"], r["batch_size"]): r["speed_vs_ar"] for r in rows}
    assert ratios[(AR, "greedy", 4)] == pytest.approx(1.0)
    assert ratios[(AR, "beam 4", 4)] == pytest.approx(0.5)
    assert ratios[(SLD, "dpm++ 10", 4)] == pytest.approx(2.0)  # 8 docs/s over greedy's 4 docs/s
    assert ratios[(SLD, "dpm++ 10", 8)] is None  # no AR row at batch 8
    # the ceiling: 2.0x with its decode (30% of the batch time) the only time spent
    ceilings = {r["batch_size"]: r.get("decode_only_vs_ar") for r in rows if r["system"] == SLD}
    assert ceilings[4] == pytest.approx(2.0 / 0.3) and ceilings[8] is None
    assert all("decode_only_vs_ar" not in r for r in rows if r["system"] == AR)
    assert all(r["ar_reference"] == ("greedy" if r["batch_size"] == 4 else None) for r in rows)
    # With a strict tolerance beam 4 (20.5) is the only comparable setting: every ratio halves.
    rows, references = benchmark_rows(fake_measurements(), tolerance=0.1)
    assert references == {4: "beam 4"}
    assert {r["setting"]: r["speed_vs_ar"] for r in rows if r["batch_size"] == 4} == pytest.approx(
        {"greedy": 2.0, "beam 4": 1.0, "dpm++ 10": 4.0}
    )
    # pure: the input rows are not modified
    plain = [summarize(m) for m in fake_measurements()]
    add_speed_ratios(plain, {4: "greedy"})
    assert "speed_vs_ar" not in plain[0]


def test_markdown_names_the_reference():
    rows, references = benchmark_rows(fake_measurements())
    table = markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "x AR ref" in lines[0]
    assert "1.00x (ref)" in lines[2] and "greedy" in lines[2]
    sld_row = lines[4]
    assert "SLD" in sld_row and "dpm++ 10" in sld_row and "2.00x (decode alone 6.67x)" in sld_row
    assert "10 / 60 / 30" in sld_row
    assert "n/a" in lines[-1]  # no ratio at batch 8
    assert "8/8 (refs None)" in lines[2]
    assert "| 20% |" in lines[2]  # greedy's three runs: (2.2 - 1.8) / 2.0
    assert "| - |" in lines[3]  # beam 4: one run, no spread
    summary = reference_summary(rows, references, 1.0)
    assert "batch 4: **greedy**" in summary and "best AR setting (beam 4)" in summary
    assert "greedy 20.00" in summary and "beam 4 20.50" in summary
    assert "no AR baseline" in reference_summary(rows[2:], {}, 1.0)


def test_speed_report_and_plot_files(tmp_path):
    rows, references = benchmark_rows(fake_measurements())
    for r in rows:
        r.setdefault("rougeL", 10.0)
        r.setdefault("distinct_2", 0.5)
        r.setdefault("memory_measure", MEMORY_NA)
    paths = save_figure(plot_quality_vs_speed(rows, title="test"), tmp_path / "plot", "benchmark")
    assert [p.name for p in paths] == ["benchmark.png", "benchmark.svg"]
    assert all(p.stat().st_size > 0 for p in paths)
    markdown = write_speed_report(
        tmp_path / "out", rows, references, ["- header line"], 1.0, {"dtype": "x"}, "t"
    )
    report = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert report["ar_reference"] == {"4": "greedy"} and report["dtype"] == "x"
    assert report["ar_quality"] == {"greedy": 20.0, "beam 4": 20.5} and report["quality_tolerance"] == 1.0
    assert "- header line" in markdown and (tmp_path / "out" / "benchmark.svg").is_file()


# ------------------------------------------------------------------------------ stage end to end


def write_config(tmp_path: Path, **config) -> Path:
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_speed_mode_end_to_end_on_cpu(tmp_path):
    from stages import benchmark

    sld_dir, baseline_dir = save_tiny_systems(tmp_path)
    out = tmp_path / "bench"
    config = write_config(
        tmp_path,
        output_dir=str(out),
        input=str(write_stories(tmp_path / "valid.jsonl")),
        num_documents=4,
        max_batches=1,
        sld_model=str(sld_dir),
        baseline_model=str(baseline_dir),
        batch_sizes=[2, 4],
        samplers=[{"scheduler": "dpm++", "steps": 2}],
        decodings=[{"name": "greedy"}, {"name": "beam 2", "num_beams": 2}],
        no_repeat_ngram_size=2,
        device="cpu",
        repeats=1,
    )
    assert benchmark.main(["-c", str(config)]) == 0

    report = json.loads((out / "benchmark.json").read_text())
    rows = report["rows"]
    assert len(rows) == 2 * (2 + 1)
    assert {(r["system"], r["setting"]) for r in rows} == {(AR, "greedy"), (AR, "beam 2"), (SLD, "dpm++ 2")}
    assert [r["num_documents"] for r in rows if r["setting"] == "greedy"] == [2, 4]  # max_batches = 1
    references = report["ar_reference"]
    assert set(references) == {"2", "4"} and set(references.values()) <= {"greedy", "beam 2"}
    for r in rows:
        assert r["docs_per_second"] > 0 and r["speed_vs_ar"] is not None
        assert r["ar_reference"] == references[str(r["batch_size"])]
        assert 0 <= r["distinct_2"] <= 1 and r["num_distinct_outputs"] >= 1 and r["rougeL"] >= 0
        if r["system"] == SLD:
            assert r["steps"] == 2 and r["ms_per_step"] > 0
            assert sum(r[f"{p}_share"] for p in ("context", "denoise", "decode")) == pytest.approx(1.0)
        if r["system"] == AR and r["setting"] == r["ar_reference"]:
            assert r["speed_vs_ar"] == pytest.approx(1.0)
    # the same repetition control for both; the tiny models have no saved budget: their truncation lengths
    rules = report["decoding_rules"]
    assert rules["no_repeat_ngram_size"] == 2
    assert (rules["sld_max_new_tokens"], rules["ar_max_new_tokens"]) == (6, 8) and "no saved budget" in rules[
        "rule"
    ]
    markdown = (out / "benchmark.md").read_text()
    assert markdown.count("| SLD |") == 2 and "x AR ref" in markdown and "(ref)" in markdown
    assert "no_repeat_ngram_size 2" in markdown
    assert set(report["weights_mib"]) == {SLD, AR} and all(v > 0 for v in report["weights_mib"].values())
    assert (out / "benchmark.png").is_file() and (out / "benchmark.svg").is_file()
    predictions = sorted(p.name for p in (out / "predictions").iterdir())
    assert "sld_dpm_2_b4.jsonl" in predictions and "ar_greedy_b2.jsonl" in predictions
    first = json.loads((out / "predictions" / "ar_greedy_b2.jsonl").read_text().splitlines()[0])
    assert first["reference"] == "Rex ran away. Tom found him." and "prediction" in first


@pytest.mark.slow
def test_all_modes_end_to_end_on_cpu(tmp_path):
    from stages import benchmark

    sld_dir, baseline_dir = save_tiny_systems(tmp_path)
    out = tmp_path / "bench"
    argv = [
        "mode=all",
        f"output_dir={out}",
        f"input={write_stories(tmp_path / 'valid.jsonl')}",
        f"sld_model={sld_dir}",
        f"baseline_model={baseline_dir}",
        "device=cpu",
        "num_documents=2",
        "batch_sizes=[2]",
        "samplers=[{scheduler: ddim, steps: 2}]",
        "decodings=[{name: greedy}]",
        "save_predictions=false",
        "steps.schedulers=[ddim]",
        "steps.counts=[1,2]",
        "steps.reference={scheduler: ddpm, steps: 3}",
        "steps.num_documents=3",
        "steps.batch_size=2",
        "length_scaling.segment_counts=[1,3]",
        "length_scaling.tokens_per_segment=2",
        "length_scaling.throughput_batch_size=2",
        "length_scaling.latency_repeats=1",
        "length_scaling.throughput_repeats=1",
        "length_scaling.sampler={scheduler: ddim, steps: 2}",
    ]
    assert benchmark.main(argv) == 0
    for stem in ("benchmark", "steps", "length_scaling"):
        assert all((out / f"{stem}.{ext}").is_file() for ext in ("json", "md", "png", "svg")), stem
    assert not (out / "predictions").exists()

    steps = json.loads((out / "steps.json").read_text())
    assert steps["num_documents"] == 3 and steps["reference"]["steps"] == 3
    assert [(r["scheduler"], r["steps"]) for r in steps["rows"]] == [("ddim", 1), ("ddim", 2)]
    assert set(steps["finding"]) == {"threshold", "per_scheduler", "fewest"}
    assert set(steps["decoding_rules"]) >= {"no_repeat_ngram_size", "sld_max_new_tokens", "ar_max_new_tokens"}

    scaling = json.loads((out / "length_scaling.json").read_text())
    assert scaling["tokens_per_segment"] == 2 and scaling["timing_only"] is True
    assert "RANDOM weights" in scaling["sld_weights"]  # the tiny denoiser has 2 segment slots, S goes to 3
    cells = {(r["system"], r["measure"], r["segments"]) for r in scaling["rows"]}
    assert cells == {(s, m, n) for s in (SLD, AR) for m in ("latency", "throughput") for n in (1, 3)}
    assert all(r["tokens_per_document"] == 2 * r["segments"] for r in scaling["rows"])
    assert set(scaling["growth"]) == {SLD, AR}
    assert "RANDOM weights" in (out / "length_scaling.md").read_text()


def test_benchmark_user_errors(tmp_path, capsys):
    from stages import benchmark

    write_segmented(tmp_path / "valid.jsonl", [SegmentedDocument("a", "x", ["y."], 1)])
    argv = [
        f"output_dir={tmp_path / 'out'}",
        f"input={tmp_path / 'valid.jsonl'}",
        "sld_model=null",
        "baseline_model=null",
    ]
    assert benchmark.main(argv) == 2
    assert "nothing to benchmark" in capsys.readouterr().err
    assert benchmark.main([f"output_dir={tmp_path / 'out'}", f"input={tmp_path / 'missing.jsonl'}"]) == 2
    assert benchmark.main([*argv, "mode=steps"]) == 2
    assert "mode=steps needs sld_model" in capsys.readouterr().err
    assert benchmark.main([*argv, "mode=fast"]) == 2
    assert "mode" in capsys.readouterr().err


def test_the_attention_line_says_whether_grouped_heads_were_packed(monkeypatch):
    from stages.benchmark import attention_line

    monkeypatch.setenv("SLD_PACKED_GQA", "0")
    assert "(SLD_PACKED_GQA=0): transformers' SDPA" in attention_line()
    monkeypatch.delenv("SLD_PACKED_GQA")
    assert "(SLD_PACKED_GQA=1): packed" in attention_line()


def test_the_sampler_line_says_whether_steps_were_fused(monkeypatch):
    from stages.benchmark import sampler_line

    monkeypatch.delenv("SLD_FUSED_SAMPLER", raising=False)
    assert "(SLD_FUSED_SAMPLER=0): the scheduler's own step" in sampler_line()
    monkeypatch.setenv("SLD_FUSED_SAMPLER", "1")
    assert "(SLD_FUSED_SAMPLER=1): one graph a step" in sampler_line()


def test_the_graphs_line_names_the_backend(monkeypatch):
    from stages.benchmark import graph_skips_line

    own = "; a setting labelled [backend] used its own for all its graphs)"
    monkeypatch.delenv("SLD_GRAPH_BACKEND", raising=False)
    assert f"(SLD_GRAPH_BACKEND=static{own}" in graph_skips_line()
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "cudagraphs")
    assert f"(SLD_GRAPH_BACKEND=cudagraphs{own}" in graph_skips_line()
    monkeypatch.setenv("SLD_DENOISER_GRAPH_BACKEND", "inductor")
    assert (
        f"(SLD_GRAPH_BACKEND=cudagraphs, SLD_DENOISER_GRAPH_BACKEND=inductor for SLD's denoiser{own}"
        in graph_skips_line()
    )


def test_an_sld_token_step_no_ar_setting_used_is_named():
    samplers = [
        SamplerSetting("dpm++", 5, static_cache=True, graph_backend="inductor"),
        SamplerSetting("dpm++", 5, static_cache=True),
    ]
    decodings = [DecodingSetting("greedy_static", static_cache=True), DecodingSetting("greedy")]
    line = token_step_mismatch(samplers, decodings, default_backend="static")
    assert line is not None
    assert "dpm++ 5 static [inductor]: inductor" in line and "AR: dynamic, static" in line
    assert "dpm++ 5 static:" not in line  # on the static graphs, as the AR greedy_static row


def test_token_steps_like_for_like_give_no_line():
    samplers = [
        SamplerSetting("dpm++", 5, static_cache=True, graph_backend="inductor"),
        SamplerSetting("ddim", 5),
    ]
    decodings = [
        DecodingSetting("greedy_static", static_cache=True, graph_backend="inductor"),
        DecodingSetting("greedy"),
    ]
    assert token_step_mismatch(samplers, decodings, default_backend="static") is None
    # the environment's backend is the default of the settings without their own
    only_default = [SamplerSetting("dpm++", 5, static_cache=True)]
    inductor_ar = [DecodingSetting("greedy_static", static_cache=True, graph_backend="inductor")]
    assert token_step_mismatch(only_default, inductor_ar, default_backend="inductor") is None
    assert token_step_mismatch(only_default, inductor_ar, default_backend="static") is not None
    assert token_step_mismatch(samplers, [], default_backend="static") is None  # no AR rows: no ratio


def test_the_run_wide_static_cache_puts_every_setting_on_its_graphs():
    assert token_step(False, None, "static") == "dynamic"
    assert token_step(True, None, "cudagraphs") == "cudagraphs"
    samplers = [SamplerSetting("dpm++", 10)]
    decodings = [DecodingSetting("greedy_static", static_cache=True)]
    assert token_step_mismatch(samplers, decodings, "static") is not None  # dynamic against static
    assert token_step_mismatch(samplers, decodings, "static", static_everywhere=True) is None
