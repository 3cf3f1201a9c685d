"""Running generation settings: the timed harness on a fake generator, the predictions files, and
both systems' generation functions under one set of decoding rules (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_systems import save_tiny_systems

from sld.data.segmented import SegmentedDocument
from sld.errors import DataError, UserError
from sld.eval.benchmark import SLD, DecodingSetting, SamplerSetting
from sld.eval.decoding_rules import DecodingRules
from sld.eval.runner import (
    ar_generate_fn,
    load_documents,
    load_models,
    measure,
    predictions_writer,
    sld_generate_fn,
    weights_mib,
)
from sld.eval.timing import MEMORY_NA, MEMORY_PEAK_RSS, MEMORY_RSS_DELTA


def test_measure_warms_up_then_times_every_repeat(caplog):
    caplog.set_level("INFO", logger="sld.eval.runner")
    calls = []

    def fake_generate(sources):
        calls.append(len(sources))
        return [f"text {s}" for s in sources], {"context": 0.01, "denoise": 0.01, "decode": 0.02}

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
    assert calls == [5, 5, 5]  # an untimed pass over all documents, then two timed runs
    assert texts == [f"text {s}" for s in sources]
    assert len(result.seconds) == 2 and len(result.parts) == 2 and result.num_batches == 3
    assert result.quality["num_distinct_outputs"] == 5 and result.quality["ref_num_distinct"] == 5
    assert result.memory_measure in (MEMORY_PEAK_RSS, MEMORY_RSS_DELTA, MEMORY_NA)
    line = caplog.records[-1].getMessage()  # the cell's row, logged as it ends
    assert line.startswith("SLD ddim 2 batch 2: ") and "ROUGE-L " in line
    assert line.endswith(", context 25% / denoise 25% / decode 50%")


class RecordingPipe:
    """Stands in for an SLDPipeline: records every call's keyword arguments."""

    def __init__(self):
        self.calls = []

    def __call__(self, sources, **kwargs):
        self.calls.append(kwargs)
        from sld.pipeline import SLDOutput

        return SLDOutput(
            [f"sld {s}" for s in sources], [[s] for s in sources], [1] * len(sources), timings={"decode": 0.1}
        )


class RecordingBaseline:
    """Stands in for a BaselineModel: records every call's keyword arguments."""

    def __init__(self):
        self.calls = []

    def generate_texts(self, sources, **kwargs):
        self.calls.append(kwargs)
        return [f"ar {s}" for s in sources]


def test_both_systems_decode_under_the_same_rules():
    rules = DecodingRules(no_repeat_ngram_size=3, sld_max_new_tokens=27, ar_max_new_tokens=120, rule="test")
    pipe, baseline = RecordingPipe(), RecordingBaseline()
    texts, split = sld_generate_fn(pipe, SamplerSetting("dpm++", 10), rules, 16, guidance_scale=2.5, seed=7)(
        ["a"]
    )
    assert texts == ["sld a"] and split == {"decode": 0.1}
    texts, split = ar_generate_fn(baseline, DecodingSetting("beam 4", 4), rules, 16)(["a", "b"])
    assert texts == ["ar a", "ar b"] and split == {}
    sld_call, ar_call = pipe.calls[0], baseline.calls[0]
    assert sld_call["no_repeat_ngram_size"] == ar_call["no_repeat_ngram_size"] == 3
    assert sld_call["max_new_tokens"] == 27 and ar_call["max_new_tokens"] == 120
    assert sld_call["batch_size"] == ar_call["batch_size"] == 16
    assert (sld_call["scheduler"], sld_call["num_inference_steps"]) == ("dpm++", 10)
    assert sld_call["guidance_scale"] == 2.5 and sld_call["seed"] == 7 and ar_call["num_beams"] == 4


def test_a_sampler_with_its_own_guidance_overrides_the_runs():
    rules = DecodingRules(no_repeat_ngram_size=3, sld_max_new_tokens=27, ar_max_new_tokens=120, rule="test")
    pipe = RecordingPipe()
    unguided = SamplerSetting("dpm++", 5, static_cache=True, guidance_scale=1.0)
    assert unguided.label == "dpm++ 5 static w1" and SamplerSetting("dpm++", 5).label == "dpm++ 5"
    sld_generate_fn(pipe, unguided, rules, 16, guidance_scale=2.5)(["a"])
    sld_generate_fn(pipe, SamplerSetting("dpm++", 5), rules, 16, guidance_scale=2.5)(["a"])
    assert [call["guidance_scale"] for call in pipe.calls] == [1.0, 2.5]
    with pytest.raises(ValueError, match="guidance_scale"):
        SamplerSetting("dpm++", 5, guidance_scale=-1.0)


def test_a_sampler_with_its_own_denoiser_backend_runs_under_it(monkeypatch):
    from sld.models import cuda_graphs

    monkeypatch.setenv("SLD_DENOISER_GRAPH_BACKEND", "static")
    rules = DecodingRules(no_repeat_ngram_size=3, sld_max_new_tokens=27, ar_max_new_tokens=120, rule="test")
    seen = []

    class BackendPipe(RecordingPipe):
        def __call__(self, sources, **kwargs):
            seen.append(cuda_graphs.denoiser_replay_backend(torch.device("cuda", 0)))
            return super().__call__(sources, **kwargs)

    pipe = BackendPipe()
    fused = SamplerSetting("dpm++", 5, static_cache=True, denoiser_backend="inductor")
    assert fused.label == "dpm++ 5 static inductor"
    sld_generate_fn(pipe, fused, rules, 16)(["a"])
    sld_generate_fn(pipe, SamplerSetting("dpm++", 5), rules, 16)(["a"])
    assert seen == [cuda_graphs.inductor_graphs, cuda_graphs.static_graphs]  # then the environment's again
    with pytest.raises(ValueError, match="denoiser_backend"):
        SamplerSetting("dpm++", 5, denoiser_backend="fast")


def test_settings_with_their_own_graph_backend_run_under_it(monkeypatch):
    """A sampler's or an AR decoding's ``graph_backend`` chooses its graphs' backend (token step and
    denoiser) for that setting alone, before the environment's; its label says which."""
    from sld.eval.runner import ar_generate_fn
    from sld.models import cuda_graphs

    monkeypatch.setenv("SLD_GRAPH_BACKEND", "static")
    monkeypatch.delenv("SLD_DENOISER_GRAPH_BACKEND", raising=False)
    cuda = torch.device("cuda", 0)
    rules = DecodingRules(no_repeat_ngram_size=3, sld_max_new_tokens=27, ar_max_new_tokens=120, rule="test")
    seen = []

    class BackendPipe(RecordingPipe):
        def __call__(self, sources, **kwargs):
            seen.append((cuda_graphs.replay_backend(cuda), cuda_graphs.denoiser_replay_backend(cuda)))
            return super().__call__(sources, **kwargs)

    class BackendBaseline:
        def generate_texts(self, sources, **kwargs):
            seen.append(cuda_graphs.replay_backend(cuda))
            return ["x" for _ in sources]

    fused = SamplerSetting("dpm++", 5, static_cache=True, guidance_scale=1.0, graph_backend="inductor")
    assert fused.label == "dpm++ 5 static w1 [inductor]"
    sld_generate_fn(BackendPipe(), fused, rules, 16)(["a"])
    sld_generate_fn(BackendPipe(), SamplerSetting("dpm++", 5), rules, 16)(["a"])
    inductor_ar = DecodingSetting("greedy static", static_cache=True, graph_backend="inductor")
    assert inductor_ar.label == "greedy static [inductor]" and DecodingSetting("greedy").label == "greedy"
    ar_generate_fn(BackendBaseline(), inductor_ar, rules, 16)(["a"])
    ar_generate_fn(BackendBaseline(), DecodingSetting("greedy static", static_cache=True), rules, 16)(["a"])
    inductor, static = cuda_graphs.inductor_graphs, cuda_graphs.static_graphs
    assert seen == [(inductor, inductor), (static, static), inductor, static]
    with pytest.raises(ValueError, match="graph_backend"):
        DecodingSetting("greedy", graph_backend="fast")
    with pytest.raises(ValueError, match="graph_backend"):
        SamplerSetting("dpm++", 5, graph_backend="fast")


def test_predictions_writer(tmp_path):
    docs = [SegmentedDocument("d0", "src", ["A b.", "C d."], 2)]
    predictions_writer(tmp_path / "predictions")(SLD, "dpm++ 10", 64, docs, ["A b. C d."], ["out"])
    line = json.loads((tmp_path / "predictions" / "sld_dpm_10_b64.jsonl").read_text())
    assert line == {
        "id": "d0",
        "source": "src",
        "prediction": "out",
        "reference": "A b. C d.",
        "reference_segments": ["A b.", "C d."],
    }


def test_loading_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_documents(str(tmp_path / "missing.jsonl"), 4)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no documents"):
        load_documents(str(tmp_path / "empty.jsonl"), 4)
    with pytest.raises(UserError, match="nothing to benchmark"):
        load_models(None, None, torch.device("cpu"), torch.float32)


def test_load_models_and_weights(tmp_path):
    sld_dir, baseline_dir = save_tiny_systems(tmp_path)
    pipe, baseline = load_models(str(sld_dir), str(baseline_dir), torch.device("cpu"), torch.float32)
    weights = weights_mib(pipe, baseline)
    assert set(weights) == {"SLD", "AR"} and weights["SLD"] > weights["AR"] > 0
    pipe, baseline = load_models(None, str(baseline_dir), torch.device("cpu"), torch.float32)
    assert pipe is None and set(weights_mib(pipe, baseline)) == {"AR"}


def test_beam_settings_a_causal_baseline_cannot_run_are_left_out():
    from sld.eval.benchmark import SpeedConfig
    from sld.eval.runner import run_speed, unavailable_decodings

    decodings = [DecodingSetting("greedy", 1), DecodingSetting("beam 4", 4)]
    baseline = RecordingBaseline()
    assert unavailable_decodings(baseline, decodings) == []  # a seq2seq baseline runs both
    baseline.is_causal = True
    assert unavailable_decodings(baseline, decodings) == ["beam 4"]
    assert unavailable_decodings(None, decodings) == []
    docs = [SegmentedDocument(f"d{i}", f"s{i}", ["A b."], 1) for i in range(3)]
    cfg = SpeedConfig(batch_sizes=[2], decodings=decodings, samplers=[], warmup=False)
    rules = DecodingRules(0, None, 5, "test")
    measurements = run_speed(cfg, None, baseline, docs, rules, torch.device("cpu"))
    assert [(m.setting, m.batch_size, m.num_documents) for m in measurements] == [("greedy", 2, 3)]
    assert {c["num_beams"] for c in baseline.calls} == {1}


def test_static_cache_settings_reach_the_decoders_and_run_only_where_they_can():
    from types import SimpleNamespace

    from sld.eval.benchmark import SpeedConfig
    from sld.eval.runner import run_speed, unavailable_decodings, unavailable_samplers

    rules = DecodingRules(0, 20, 60, "test")
    pipe, baseline = RecordingPipe(), RecordingBaseline()
    sld_generate_fn(pipe, SamplerSetting("dpm++", 10, static_cache=True), rules, 4)(["a"])
    sld_generate_fn(pipe, SamplerSetting("dpm++", 10), rules, 4)(["a"])
    assert [c["static_cache"] for c in pipe.calls] == [True, False]
    ar_generate_fn(baseline, DecodingSetting("greedy static", 1, static_cache=True), rules, 4)(["a"])
    ar_generate_fn(baseline, DecodingSetting("greedy", 1), rules, 4)(["a"])
    assert [c.get("static_cache", False) for c in baseline.calls] == [True, False]

    decodings = [DecodingSetting("greedy", 1), DecodingSetting("greedy static", 1, static_cache=True)]
    samplers = [SamplerSetting("dpm++", 10), SamplerSetting("dpm++", 10, static_cache=True)]
    assert SamplerSetting("dpm++", 10, static_cache=True).label == "dpm++ 10 static"
    baseline.is_causal, pipe.autoencoder = False, SimpleNamespace(is_causal=False)  # encoder-decoder
    assert unavailable_decodings(baseline, decodings) == ["greedy static"]
    assert unavailable_samplers(pipe, samplers) == ["dpm++ 10 static"]
    docs = [SegmentedDocument(f"d{i}", f"s{i}", ["A b."], 1) for i in range(2)]
    cfg = SpeedConfig(batch_sizes=[2], decodings=decodings, samplers=samplers, warmup=False)
    measurements = run_speed(cfg, pipe, baseline, docs, rules, torch.device("cpu"))
    assert [m.setting for m in measurements] == ["greedy", "dpm++ 10"]
    baseline.is_causal, pipe.autoencoder.is_causal = True, True
    assert unavailable_decodings(baseline, decodings) == [] and unavailable_samplers(pipe, samplers) == []
