"""Static-cache decoding (``static_cache=True``) writes what the dynamic loop writes.

On a CPU the one-token step runs eagerly (no CUDA graphs); the cache, the mask over its unwritten
positions and the rows that stay in the batch after their eos are what is tested here.
"""

import pytest
import tiny_models
import torch

from sld.errors import UserError
from sld.models.baseline import BaselineConfig, BaselineModel
from sld.models.static_decoding import row_bucket, stepper_for

SOURCES = ["Anna walked her dog.", None, "Lucy", "Sam fixed the old bike today and then he rode it home."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    return tiny_models.save_tiny_bert(root / "bert"), tiny_models.save_tiny_causal_lm(root / "lm")


@pytest.fixture(scope="module")
def baseline(folders):
    config = BaselineConfig(
        encoder="decoder", decoder_name_or_path=folders[1], max_source_tokens=16, max_target_tokens=24
    )
    torch.manual_seed(0)
    return BaselineModel.from_config(config).eval()


@pytest.mark.parametrize("options", [{}, {"no_repeat_ngram_size": 2}, {"min_new_tokens": 6}])
def test_ar_baseline_left_padded_sources_decode_the_same(baseline, options):
    dynamic = baseline.generate_texts(SOURCES, batch_size=4, max_new_tokens=12, **options)
    static = baseline.generate_texts(SOURCES, batch_size=4, max_new_tokens=12, static_cache=True, **options)
    assert static == dynamic
    assert len(set(dynamic)) > 1  # varied outputs: a broken mask or cache would show


@pytest.mark.parametrize("conditioning", ["kv", "prefix"])
def test_segment_decoder_latents_decode_the_same(folders, conditioning):
    model = tiny_models.tiny_causal_autoencoder(*folders, seed=1, conditioning=conditioning)
    z = model.encode_texts(["Tom baked a cake.", "Lucy lost her keys at the mall.", "Oil rose."])
    z = z + 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    dynamic = model.decode_latents(z, max_new_tokens=10)
    static = model.decode_latents(z, max_new_tokens=10, static_cache=True)
    assert static == dynamic


def test_the_static_cache_is_reused_and_reset_between_calls(baseline):
    first = baseline.generate_texts(SOURCES[:2], batch_size=2, max_new_tokens=8, static_cache=True)
    stepper = stepper_for(baseline.lm, compile_step=False)
    caches = dict(stepper.caches)
    again = baseline.generate_texts(SOURCES[:2], batch_size=2, max_new_tokens=8, static_cache=True)
    assert again == first
    assert stepper.caches == caches  # same shapes: the same cache objects, reset
    # a source a few tokens longer: the same 64-position bucket, so the same cache
    longer = baseline.generate_texts(
        ["Anna walked her dog home.", None], batch_size=2, max_new_tokens=8, static_cache=True
    )
    assert stepper.caches == caches and len(longer) == 2


def test_the_compiled_step_traces_as_one_graph(baseline, monkeypatch):
    """``fullgraph=True`` (the CUDA-graph step's setting) fails on a graph break, such as a host sync."""
    from sld.models import static_decoding

    original = static_decoding.stepper_for
    monkeypatch.setattr(static_decoding, "stepper_for", lambda lm, compile_step: original(lm, True))
    dynamic = baseline.generate_texts(SOURCES, batch_size=4, max_new_tokens=8, no_repeat_ngram_size=2)
    static = baseline.generate_texts(
        SOURCES, batch_size=4, max_new_tokens=8, no_repeat_ngram_size=2, static_cache=True
    )
    assert static == dynamic
    assert original(baseline.lm, True).compiled


def test_prompts_of_new_lengths_reuse_the_compiled_step(folders, monkeypatch):
    """At batch 1 every prompt length once traced the first step anew (its first token a strided column
    of the prompt; dynamo guards on strides): 6 graphs for 4 prompts in 2 cache buckets."""
    from torch._dynamo.utils import counters

    from sld.models import static_decoding

    config = BaselineConfig(
        encoder="decoder", decoder_name_or_path=folders[1], max_source_tokens=64, max_target_tokens=24
    )
    torch.manual_seed(0)
    model = BaselineModel.from_config(config).eval()
    original = static_decoding.stepper_for
    monkeypatch.setattr(static_decoding, "stepper_for", lambda lm, compile_step: original(lm, True))
    sources = [
        "Anna walked her dog.",
        "Lucy went to the old market in town today.",
        "Sam fixed it.",
        "Tom rode his bike to the lake and back.",
    ]
    counters.clear()
    model.generate_texts(sources, batch_size=1, max_new_tokens=12, static_cache=True)
    buckets = len(original(model.lm, True).caches)
    assert counters["stats"]["unique_graphs"] == buckets


def test_row_buckets():
    buckets = {1: 1, 2: 2, 3: 4, 5: 8, 8: 8, 33: 64, 64: 64, 65: 128, 256: 256, 257: 320}
    assert {rows: row_bucket(rows) for rows in buckets} == buckets


def test_segment_batches_of_nearby_sizes_share_one_compiled_step(folders, monkeypatch):
    """SLD decodes all segments of a batch of documents at once, and their number changes from batch
    to batch; rounded up to one row bucket (8 here) they reuse one graph and decode what the dynamic
    loop decodes."""
    from torch._dynamo.utils import counters

    from sld.models import static_decoding

    model = tiny_models.tiny_causal_autoencoder(*folders, seed=1, conditioning="kv")
    original = static_decoding.stepper_for
    monkeypatch.setattr(static_decoding, "stepper_for", lambda lm, compile_step: original(lm, True))
    texts = "Tom baked a cake.|Lucy lost her keys.|Oil rose.|Sam ran.|It rained.|Al sang.|Bo hid.".split("|")
    z = model.encode_texts(texts)
    z = z + 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    counters.clear()
    for rows in (5, 6, 7):
        static = model.decode_latents(z[:rows], max_new_tokens=8, static_cache=True)
        assert static == model.decode_latents(z[:rows], max_new_tokens=8)
    assert counters["stats"]["unique_graphs"] == 1
    assert [key[0] for key in original(model.lm, True).caches] == [8]


def test_an_encoder_decoder_segment_decoder_refuses_static_cache(folders):
    model = tiny_models.tiny_autoencoder(folders[0], seed=0).eval()
    z = model.encode_texts(["Tom baked a cake."])
    with pytest.raises(UserError, match="static_cache"):
        model.decode_latents(z, static_cache=True)


def test_a_stepper_does_not_keep_its_lm_alive(folders):
    import gc
    import weakref

    lm = BaselineModel.from_config(
        BaselineConfig(
            encoder="decoder", decoder_name_or_path=folders[1], max_source_tokens=8, max_target_tokens=8
        )
    ).lm
    stepper_for(lm, compile_step=False)
    ref = weakref.ref(lm)
    del lm
    gc.collect()
    assert ref() is None
