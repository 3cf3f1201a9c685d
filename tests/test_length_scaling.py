"""Length scaling: growth arithmetic on made-up timings, the report files, and forced lengths on tiny
models (every SLD segment exactly T tokens, every AR document exactly S x T)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_systems import save_tiny_systems

from sld.eval.benchmark import AR, SLD, SamplerSetting
from sld.eval.length_scaling import (
    LATENCY,
    THROUGHPUT,
    LengthScalingConfig,
    ar_forced_length_fn,
    default_tokens_per_segment,
    denoiser_for_segments,
    growth,
    run_length_scaling,
    sld_forced_length_fn,
    synthetic_sources,
    write_length_scaling_report,
)
from sld.models.baseline import BaselineModel
from sld.pipeline import SLDPipeline


def cell(system, kind, segments, seconds, batch=1):
    return {
        "system": system,
        "measure": kind,
        "segments": segments,
        "batch_size": batch,
        "seconds": seconds,
        "docs_per_second": batch / seconds,
        "tokens_per_document": 20 * segments,
        "tokens_per_second": batch * 20 * segments / seconds,
    }


MADE_UP = [
    *(cell(SLD, LATENCY, s, t) for s, t in ((1, 0.10), (5, 0.20), (20, 0.26))),
    *(cell(AR, LATENCY, s, t) for s, t in ((1, 0.25), (5, 1.0), (20, 4.0))),
    *(cell(SLD, THROUGHPUT, s, t, 64) for s, t in ((1, 0.5), (5, 0.8), (20, 1.6))),
    *(cell(AR, THROUGHPUT, s, t, 64) for s, t in ((1, 1.0), (5, 4.0), (20, 16.0))),
]


def test_growth_from_five_to_twenty_segments():
    g = growth(MADE_UP, 5)
    assert g[SLD]["latency_growth"] == pytest.approx(1.3) and g[AR]["latency_growth"] == pytest.approx(4.0)
    assert g[SLD]["throughput_drop"] == pytest.approx(2.0) and g[AR]["throughput_drop"] == pytest.approx(4.0)
    assert (g[SLD]["from_segments"], g[SLD]["to_segments"]) == (5, 20)
    # a start that was not run falls back to the smallest count
    g = growth(MADE_UP, 3)
    assert g[AR]["from_segments"] == 1 and g[AR]["latency_growth"] == pytest.approx(16.0)
    # a missing cell gives None, not a made-up ratio
    g = growth([r for r in MADE_UP if not (r["system"] == SLD and r["measure"] == THROUGHPUT)], 5)
    assert g[SLD]["throughput_drop"] is None and g[SLD]["latency_growth"] == pytest.approx(1.3)


def test_report_files_and_keys(tmp_path):
    report = {
        "tokens_per_segment": 20,
        "sources": "made up",
        "sld_sampler": "dpm++ 10",
        "sld_weights": "trained weights as loaded",
        "ar_weights": "as loaded",
        "timing_only": True,
        "rows": MADE_UP,
        "growth": growth(MADE_UP, 5),
    }
    markdown = write_length_scaling_report(report, tmp_path, ["- header"])
    assert "- SLD from 5 to 20 segments: latency x1.30, throughput /2.00" in markdown
    assert "- AR from 5 to 20 segments: latency x4.00" in markdown
    saved = json.loads((tmp_path / "length_scaling.json").read_text())
    assert saved["growth"][SLD]["latency_growth"] == pytest.approx(1.3) and len(saved["rows"]) == 12
    for ext in ("md", "png", "svg"):
        assert (tmp_path / f"length_scaling.{ext}").stat().st_size > 0


def test_sources_and_default_segment_length():
    sources = synthetic_sources(5, seed=3)
    assert len(sources) == 5 and sources == synthetic_sources(5, seed=3) and len(set(sources)) == 5

    class WordTokenizer:
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [t.split() for t in texts]}

    length = default_tokens_per_segment(WordTokenizer())
    assert 4 <= length <= 30  # a synthetic story sentence, in words


def record_generate(model, shapes):
    original = model.lm.generate

    def generate(*args, **kwargs):
        ids = original(*args, **kwargs)
        shapes.append(tuple(ids.shape))
        return ids

    model.lm.generate = generate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sld_dir, baseline_dir = save_tiny_systems(tmp_path_factory.mktemp("systems"))
    return SLDPipeline.from_pretrained(sld_dir, device="cpu"), BaselineModel.from_pretrained(
        baseline_dir, device="cpu"
    )


def test_both_systems_write_exactly_the_forced_number_of_tokens(tiny):
    pipe, baseline = tiny
    sources = synthetic_sources(2)
    wide, note = denoiser_for_segments(pipe.denoiser, 3)
    sld_shapes, ar_shapes = [], []
    record_generate(pipe.autoencoder, sld_shapes)
    record_generate(baseline, ar_shapes)
    texts = sld_forced_length_fn(pipe, wide, sources, 3, 4, SamplerSetting("ddim", 2))()
    assert len(texts) == 2
    assert sld_shapes == [(2 * 3, 1 + 4)]  # B x S segments, decoder start + T tokens each
    texts = ar_forced_length_fn(baseline, sources, 3 * 4)()
    assert len(texts) == 2
    assert ar_shapes == [(2, 1 + 3 * 4)]  # decoder start + S x T tokens
    del pipe.autoencoder.lm.generate, baseline.lm.generate


def test_denoiser_for_segments(tiny):
    pipe, _ = tiny
    same, note = denoiser_for_segments(pipe.denoiser, 2)
    assert same is pipe.denoiser and "trained" in note
    wide, note = denoiser_for_segments(pipe.denoiser, 5)
    assert wide.config.max_segments == 5 and "RANDOM weights" in note and "max_segments=2" in note
    assert {k: v for k, v in wide.config.items() if k != "max_segments"} == {
        k: v for k, v in pipe.denoiser.config.items() if k != "max_segments"
    }


def test_run_length_scaling_with_one_system(tiny):
    _, baseline = tiny
    cfg = LengthScalingConfig(
        segment_counts=[2, 1],
        tokens_per_segment=3,
        throughput_batch_size=2,
        latency_repeats=2,
        throughput_repeats=1,
        growth_from=1,
    )
    report = run_length_scaling(cfg, None, baseline, torch.device("cpu"))
    assert [(r["measure"], r["segments"], r["batch_size"]) for r in report["rows"]] == [
        (LATENCY, 1, 1),
        (THROUGHPUT, 1, 2),
        (LATENCY, 2, 1),
        (THROUGHPUT, 2, 2),
    ]
    assert all(r["system"] == AR and r["tokens_per_document"] == 3 * r["segments"] for r in report["rows"])
    assert [len(r["seconds_all"]) for r in report["rows"]] == [2, 1, 2, 1]
    assert report["sld_weights"] is None and set(report["growth"]) == {AR}
    with pytest.raises(ValueError):
        run_length_scaling(cfg, None, None, torch.device("cpu"))
    with pytest.raises(ValueError):
        LengthScalingConfig(segment_counts=[0])


def causal_systems(tmp_path):
    """An SLD pipeline with a tiny causal-LM segment decoder and an AR baseline on the same LM."""
    from tiny_models import save_tiny_bert, save_tiny_causal_lm, tiny_causal_autoencoder

    from sld.models.baseline import BaselineConfig
    from sld.models.context_encoder import ContextEncoder
    from sld.models.denoiser import SegmentDiT
    from sld.pipeline import PipelineConfig

    bert = save_tiny_bert(tmp_path / "bert")
    lm = save_tiny_causal_lm(tmp_path / "lm")
    autoencoder = tiny_causal_autoencoder(bert, lm, seed=0)
    denoiser = SegmentDiT(
        latent_dim=16, num_latents=4, max_segments=3, context_dim=24, width=16, depth=1, heads=2
    )
    pipe = SLDPipeline(denoiser, autoencoder, ContextEncoder.from_pretrained(bert), PipelineConfig())
    baseline = BaselineModel.from_config(
        BaselineConfig(encoder="decoder", decoder_name_or_path=lm, max_target_tokens=32)
    )
    assert autoencoder.is_causal and baseline.is_causal
    return pipe, denoiser, baseline


def test_forced_lengths_with_causal_lm_decoders(tmp_path, monkeypatch):
    """The same guarantee with the causal-LM decode loop (rows never finish: exactly T / S x T tokens)."""
    import sld.models.autoencoder as autoencoder_module
    import sld.models.baseline as baseline_module

    pipe, denoiser, baseline = causal_systems(tmp_path)

    shapes = {}
    for name, module in (("SLD", autoencoder_module), ("AR", baseline_module)):
        original = module.decode

        def recorded(*args, _original=original, _name=name, **kwargs):
            ids = _original(*args, **kwargs)
            shapes[_name] = tuple(ids.shape)
            return ids

        monkeypatch.setattr(module, "decode", recorded)
    sources = synthetic_sources(2)
    assert len(sld_forced_length_fn(pipe, denoiser, sources, 3, 4, SamplerSetting("ddim", 2))()) == 2
    assert len(ar_forced_length_fn(baseline, sources, 3 * 4)()) == 2
    assert shapes == {"SLD": (2 * 3, 4), "AR": (2, 3 * 4)}  # the causal loop returns the new tokens only


def test_static_cache_cells_can_be_profiled(tmp_path):
    """``profile_segments``: one throughput batch of each system under torch.profiler, its phases named
    (the static cache runs the graphed denoiser and the static token loop; on a CPU without graphs)."""
    pipe, _, baseline = causal_systems(tmp_path)
    cfg = LengthScalingConfig(
        segment_counts=[1, 2],
        tokens_per_segment=3,
        throughput_batch_size=2,
        latency_repeats=1,
        throughput_repeats=1,
        growth_from=1,
        static_cache=True,
        profile_segments=2,
        sampler=SamplerSetting("dpm++", 2),
    )
    report = run_length_scaling(cfg, pipe, baseline, torch.device("cpu"), profile_dir=tmp_path)
    assert set(report["profiles"]) == {SLD, AR}
    sld_profile = (tmp_path / "profile_sld.txt").read_text()
    assert "2 segments of 3 tokens, batch 2" in sld_profile
    assert all(
        name in sld_profile for name in ("sld.context", "sld.denoise", "sld.decode", "sld.token_steps")
    )
    assert "sld.token_steps" in (tmp_path / "profile_ar.txt").read_text()
    with pytest.raises(ValueError, match="profile_segments"):
        LengthScalingConfig(segment_counts=[1, 2], profile_segments=5)
