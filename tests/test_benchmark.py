"""`sld benchmark`: the bookkeeping on made-up timings (ratios, table rows, plot), the timing harness
on a fake generator, and the stage end to end on a tiny SLD pipeline and a tiny AR baseline on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizer

from sld.data.segmented import SegmentedDocument, write_segmented
from sld.eval.benchmark import (
    AR,
    MEMORY_NA,
    MEMORY_PEAK_RSS,
    MEMORY_RSS_DELTA,
    SLD,
    Measurement,
    MemoryMonitor,
    add_speed_ratios,
    aggregate_timings,
    benchmark_rows,
    markdown_table,
    measure,
    plot_quality_vs_speed,
    summarize,
)

TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=1, num_heads=4, dropout_rate=0.0
)


def fake_measurements() -> list[Measurement]:
    split = {"context": 0.1, "denoise": 0.6, "decode": 0.3}
    return [
        Measurement(
            AR, "greedy", 4, 8, seconds=[2.0, 2.2, 1.8], quality={"rougeL": 20.0, "num_distinct_outputs": 8}
        ),
        Measurement(AR, "beam 4", 4, 8, seconds=[4.0]),
        Measurement(SLD, "dpm++ 10", 4, 8, seconds=[1.0], parts=[split], steps=10),
        Measurement(SLD, "dpm++ 10", 8, 8, seconds=[0.5], parts=[split], steps=10),
    ]


def test_aggregate_timings_median_and_mean_parts():
    out = aggregate_timings(
        [3.0, 1.0, 2.0], [{"denoise": 1.0, "decode": 0.5}, {"denoise": 3.0, "decode": 0.5}]
    )
    assert out == {"seconds": 2.0, "seconds_min": 1.0, "seconds_max": 3.0, "decode": 0.5, "denoise": 2.0}
    with pytest.raises(ValueError):
        aggregate_timings([])


def test_summarize_throughput_latency_and_split():
    ar, _, sld, _ = fake_measurements()
    row = summarize(ar)
    assert row["seconds"] == 2.0 and row["docs_per_second"] == pytest.approx(4.0)
    assert row["ms_per_document"] == pytest.approx(250.0) and row["seconds_per_batch"] == pytest.approx(1.0)
    assert row["num_batches"] == 2 and row["ms_per_step"] is None and row["rougeL"] == 20.0
    row = summarize(sld)
    assert row["denoise_seconds"] == pytest.approx(0.6) and row["denoise_share"] == pytest.approx(0.6)
    assert row["context_share"] == pytest.approx(0.1) and row["decode_share"] == pytest.approx(0.3)
    # 0.6 s of denoising over 10 steps x 2 batches
    assert row["ms_per_step"] == pytest.approx(30.0)


def test_speed_ratios_against_ar_greedy_at_the_same_batch_size():
    rows = benchmark_rows(fake_measurements())
    ratios = {(r["system"], r["setting"], r["batch_size"]): r["speed_vs_ar_greedy"] for r in rows}
    assert ratios[(AR, "greedy", 4)] == pytest.approx(1.0)
    assert ratios[(AR, "beam 4", 4)] == pytest.approx(0.5)
    assert ratios[(SLD, "dpm++ 10", 4)] == pytest.approx(2.0)
    assert ratios[(SLD, "dpm++ 10", 8)] is None  # no AR greedy row at batch 8
    # pure: the input rows are not modified
    plain = [summarize(m) for m in fake_measurements()]
    add_speed_ratios(plain)
    assert "speed_vs_ar_greedy" not in plain[0]


def test_markdown_table_rows():
    table = markdown_table(benchmark_rows(fake_measurements()))
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    sld_row = lines[4]
    assert "SLD" in sld_row and "dpm++ 10" in sld_row and "2.00x" in sld_row and "10 / 60 / 30" in sld_row
    assert "n/a" in lines[-1]  # no ratio at batch 8
    assert "8/8 (refs None)" in lines[2]


def test_plot_writes_png_and_svg(tmp_path):
    rows = benchmark_rows(fake_measurements())
    for r in rows:
        r.setdefault("rougeL", 10.0)
        r.setdefault("distinct_2", 0.5)
    paths = plot_quality_vs_speed(rows, tmp_path / "plot" / "benchmark", title="test")
    assert [p.name for p in paths] == ["benchmark.png", "benchmark.svg"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_measure_warms_up_then_times_every_repeat():
    calls = []

    def fake_generate(sources):
        calls.append(len(sources))
        return [f"text {s}" for s in sources], {"denoise": 0.01}

    sources = ["a", "b", "c", "d", "e"]
    result, texts = measure(
        SLD,
        "ddim 2",
        fake_generate,
        sources,
        list(sources),
        batch_size=2,
        device=torch.device("cpu"),
        repeats=2,
        steps=2,
    )
    assert calls == [2, 5, 5]  # one warm-up batch, then two timed runs over all documents
    assert texts == [f"text {s}" for s in sources]
    assert len(result.seconds) == 2 and len(result.parts) == 2 and result.num_batches == 3
    assert result.quality["num_distinct_outputs"] == 5 and result.quality["ref_num_distinct"] == 5
    assert result.memory_measure in (MEMORY_PEAK_RSS, MEMORY_RSS_DELTA, MEMORY_NA)


def test_memory_monitor_on_cpu_reports_what_it_measured():
    with MemoryMonitor(torch.device("cpu")) as memory:
        block = torch.ones(8 * 2**20 // 4)  # 8 MiB
        block.add_(1)
    assert memory.measure in (MEMORY_PEAK_RSS, MEMORY_RSS_DELTA, MEMORY_NA)
    if memory.measure != MEMORY_NA:
        assert memory.peak_mib is not None and memory.peak_mib >= 0


# ------------------------------------------------------------------------------ stage end to end


def save_tiny_bert(folder: Path) -> str:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'#"]
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(folder))
    return str(folder)


def save_tiny_models(root: Path, corpus: list[str]) -> tuple[Path, Path]:
    """A tiny SLD pipeline and a tiny AR baseline sharing one random BERT encoder; returns both folders."""
    from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
    from sld.models.baseline import BaselineConfig, BaselineModel
    from sld.models.context_encoder import ContextEncoder
    from sld.models.denoiser import SegmentDiT
    from sld.pipeline import PipelineConfig, SLDPipeline

    bert = save_tiny_bert(root / "bert")
    torch.manual_seed(0)
    autoencoder = SegmentAutoencoder.from_config(
        AutoencoderConfig(
            encoder=bert,
            decoder_config=dict(TINY_T5),
            decoder_vocab_size=280,
            num_latents=2,
            latent_dim=8,
            compressor_layers=1,
            compressor_heads=2,
            reconstructor_layers=0,
            dropout=0.0,
            max_segment_tokens=6,
        ),
        corpus,
    )
    context = ContextEncoder(
        AutoModel.from_pretrained(bert), AutoTokenizer.from_pretrained(bert), max_length=16
    )
    denoiser = SegmentDiT(
        latent_dim=8,
        num_latents=2,
        max_segments=2,
        context_dim=16,
        width=16,
        depth=2,
        heads=2,
        num_null_tokens=1,
    )
    pipeline = SLDPipeline(denoiser, autoencoder, context, PipelineConfig(guidance_scale=1.5))
    sld_dir = pipeline.save_pretrained(root / "sld")
    baseline = BaselineModel.from_config(
        BaselineConfig(
            encoder=bert, decoder_config=dict(TINY_T5), decoder_vocab_size=280, max_target_tokens=8
        ),
        corpus,
    )
    baseline_dir = baseline.save_pretrained(root / "baseline")
    return sld_dir, baseline_dir


@pytest.mark.slow
def test_benchmark_end_to_end_on_cpu(tmp_path):
    from stages import benchmark

    stories = [
        ("lost dog", ["Rex ran away.", "Tom found him."]),
        ("snow", ["It snowed.", "School was closed."]),
        ("cake", ["Anna baked a cake.", "It burned."]),
        (None, ["A cat sat.", "It was happy."]),
        ("rain", ["It rained.", "We stayed in."]),
    ]
    docs = [SegmentedDocument(f"d{i}", src, segs, len(segs)) for i, (src, segs) in enumerate(stories)]
    write_segmented(tmp_path / "valid.jsonl", docs)
    sld_dir, baseline_dir = save_tiny_models(tmp_path, [s for _, segs in stories for s in segs] * 4)

    out = tmp_path / "bench"
    config = {
        "output_dir": str(out),
        "input": str(tmp_path / "valid.jsonl"),
        "num_documents": 4,
        "max_batches": 1,
        "sld_model": str(sld_dir),
        "baseline_model": str(baseline_dir),
        "batch_sizes": [2, 4],
        "samplers": [{"scheduler": "dpm++", "steps": 2}],
        "decodings": [{"name": "greedy"}, {"name": "beam 2", "num_beams": 2, "no_repeat_ngram_size": 2}],
        "device": "cpu",
        "repeats": 1,
    }
    config_file = tmp_path / "benchmark.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert benchmark.main(["-c", str(config_file)]) == 0

    report = json.loads((out / "benchmark.json").read_text())
    rows = report["rows"]
    assert len(rows) == 2 * (2 + 1)
    assert {(r["system"], r["setting"]) for r in rows} == {(AR, "greedy"), (AR, "beam 2"), (SLD, "dpm++ 2")}
    assert [r["num_documents"] for r in rows if r["setting"] == "greedy"] == [2, 4]  # max_batches = 1
    for r in rows:
        assert r["docs_per_second"] > 0 and r["speed_vs_ar_greedy"] is not None
        assert 0 <= r["distinct_2"] <= 1 and r["num_distinct_outputs"] >= 1 and r["rougeL"] >= 0
        if r["system"] == SLD:
            assert r["steps"] == 2 and r["ms_per_step"] > 0
            assert sum(r[f"{p}_share"] for p in ("context", "denoise", "decode")) == pytest.approx(1.0)
        if r["setting"] == "greedy":
            assert r["speed_vs_ar_greedy"] == pytest.approx(1.0)
    markdown = (out / "benchmark.md").read_text()
    assert markdown.count("| SLD |") == 2 and "x AR greedy" in markdown
    assert set(report["weights_mib"]) == {SLD, AR} and all(v > 0 for v in report["weights_mib"].values())
    assert (out / "benchmark.png").is_file() and (out / "benchmark.svg").is_file()
    predictions = sorted(p.name for p in (out / "predictions").iterdir())
    assert "sld_dpm_2_b4.jsonl" in predictions and "ar_greedy_b2.jsonl" in predictions
    first = json.loads((out / "predictions" / "ar_greedy_b2.jsonl").read_text().splitlines()[0])
    assert first["reference"] == "Rex ran away. Tom found him." and "prediction" in first


def test_benchmark_without_models_is_a_user_error(tmp_path, capsys):
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
