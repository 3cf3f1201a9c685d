"""sld.compilation: which blocks are compiled, and compiled blocks train like eager ones."""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config
from tiny_models import randomize_zero_init, save_tiny_causal_lm, tiny_dit
from torch import nn

from sld.compilation import (
    compile_model,
    cuda_graph_step,
    eager,
    inductor_options,
    repeated_blocks,
    uncompile,
)
from sld.config import ConfigError
from sld.models.baseline import BaselineConfig, BaselineModel


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # repeated, but inside a block


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Inner(), Inner(), Inner()])
        self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])  # two classes: not a repeated block
        self.single = nn.ModuleList([nn.Linear(2, 2)])  # one member: nothing to share


def test_repeated_blocks_are_the_outermost_lists_of_one_class():
    model = Mixed()
    assert repeated_blocks(model) == list(model.blocks)
    dit = tiny_dit(depth=4)
    assert repeated_blocks(dit) == list(dit.blocks)
    assert repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) == []


def test_a_causal_lm_baseline_compiles_its_decoder_layers(tmp_path):
    lm = save_tiny_causal_lm(tmp_path / "lm")
    model = BaselineModel.from_config(BaselineConfig(encoder="decoder", decoder_name_or_path=lm))
    blocks = repeated_blocks(model)
    assert blocks and {type(b).__name__ for b in blocks} == {"LlamaDecoderLayer"}
    assert len(blocks) == model.lm.config.num_hidden_layers


class TwoKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([Inner(), Inner()])
        self.decoder = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_compile_blocks_compiles_only_the_named_classes():
    model = compile_model(TwoKinds(), backend="eager", only=["Inner"])
    assert all(block._compiled_call_impl is not None for block in model.encoder)
    assert all(getattr(layer, "_compiled_call_impl", None) is None for layer in model.decoder)
    with pytest.raises(
        ConfigError, match=r"repeated blocks are \['Inner', 'Linear'\]; no block is a T5Block"
    ):
        compile_model(TwoKinds(), backend="eager", only=["T5Block"])
    uncompile(model)


def test_a_model_without_repeated_blocks_is_compiled_whole():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    compiled = compile_model(model)
    assert compiled is not model and compiled._orig_mod is model
    assert uncompile(compiled) is model


def test_inductor_compiles_the_blocks_without_its_coalescing_analysis(monkeypatch):
    """The analysis fails on dynamic shapes (the compiled autoencoder's first step on an H200);
    the blocks are compiled with it off, and only Inductor takes the option."""
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    model = tiny_dit(depth=2)
    compile_model(model)
    assert (
        calls
        == [{"backend": "inductor", "dynamic": None, "options": {"triton.coalesce_tiling_analysis": False}}]
        * 2
    )
    calls.clear()
    compile_model(model, backend="eager")
    assert calls == [{"backend": "eager", "dynamic": None}] * 2


def test_max_autotune_reaches_inductor_beside_the_block_options(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    compile_model(tiny_dit(depth=2), max_autotune=True, dynamic=True)
    expected = {"triton.coalesce_tiling_analysis": False, "max_autotune": True}
    assert calls == [{"backend": "inductor", "dynamic": True, "options": expected}] * 2


@pytest.mark.parametrize(
    ("version", "dynamic", "mix_order_off"),
    [("2.11.0+cu130", True, True), ("2.11.0+cu130", None, False), ("2.13.0+cpu", True, False)],
)
def test_shape_generic_blocks_go_without_mix_order_reductions_on_older_torch(
    monkeypatch, version, dynamic, mix_order_off
):
    """torch 2.11 mis-sliced the mix-order reductions' workspace in shape-generic graphs (the
    bucketed autoencoder's first backward on an H200); those graphs go without them there."""
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch, "__version__", version)
    compile_model(tiny_dit(depth=2), dynamic=dynamic)
    options = calls[0]["options"]
    assert ("triton.mix_order_reduction" in options) == mix_order_off
    if mix_order_off:
        assert options["triton.mix_order_reduction"] is False
    assert options["triton.coalesce_tiling_analysis"] is False


def test_the_compiled_token_cross_entropy_goes_without_mix_order_reductions_on_older_torch(monkeypatch):
    """Compiled shape-generic, the losses' token cross-entropy takes the same workaround as the blocks."""
    import sld.losses

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    sld.losses.compiled_chunk_nll.cache_clear()
    try:
        sld.losses.compiled_chunk_nll()
    finally:
        sld.losses.compiled_chunk_nll.cache_clear()  # later callers compile for real
    assert calls == [
        {
            "dynamic": True,
            "options": {"triton.coalesce_tiling_analysis": False, "triton.mix_order_reduction": False},
        }
    ]


def test_inductor_accepts_every_block_option():
    """Each option is a key of this torch's Inductor config (an unknown one fails the compile)."""
    options = dict(
        inductor_options(max_autotune=True, cuda_graphs=True),
        **{"triton.mix_order_reduction": False},
    )
    with torch._inductor.config.patch(options):  # an unknown key raises AttributeError here
        assert torch._inductor.config.triton.mix_order_reduction is False
        assert torch._inductor.config.triton.cudagraphs and not torch._inductor.config.graph_partition


def test_extra_inductor_options_come_last_and_unknown_names_are_config_errors(monkeypatch):
    """``loop.compile_options`` reaches each block's ``compile`` over sld's own options; a name that
    is not in ``torch._inductor.config`` fails before anything compiles, naming the key."""
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    extra = {"coordinate_descent_tuning": True, "triton.coalesce_tiling_analysis": True}
    compile_model(tiny_dit(depth=2), extra_options=extra)
    assert len(calls) == 2
    assert calls[0]["options"]["coordinate_descent_tuning"] is True
    assert calls[0]["options"]["triton.coalesce_tiling_analysis"] is True  # over INDUCTOR_OPTIONS' False
    calls.clear()
    with pytest.raises(
        ConfigError, match=r"loop.compile_options: Inductor has no option 'coordinate_descent'"
    ):
        compile_model(tiny_dit(depth=2), extra_options={"coordinate_descent": True})
    assert calls == []


def test_cuda_graphs_reach_inductor_without_graph_partitions_and_need_it(monkeypatch):
    """``cuda_graphs``: Inductor's CUDA graphs, for fixed-shape graphs only, over whole graphs (its
    graph partitions stopped the autoencoder on an H100). It means nothing to another backend: asking
    for it there is an error."""
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    compile_model(tiny_dit(depth=2), cuda_graphs=True)
    assert calls[0]["options"] == {
        "triton.coalesce_tiling_analysis": False,
        "triton.cudagraphs": True,
        "triton.cudagraph_skip_dynamic_graphs": True,
        "graph_partition": False,
    }
    with pytest.raises(ConfigError, match="compile_cuda_graphs.*backend='eager'"):
        compile_model(tiny_dit(depth=2), backend="eager", cuda_graphs=True)


@pytest.mark.parametrize("enabled", [False, True])
def test_a_cuda_graph_step_is_marked_only_when_asked(monkeypatch, enabled):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    cuda_graph_step(enabled)
    assert marks == ([1] if enabled else [])


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_outputs_and_gradients():
    """A 2-block denoiser with its blocks compiled in place (inductor on the CPU): the same outputs
    and gradients as eager, the same module and state dict, and plain again after ``uncompile``."""
    from torch._dynamo.utils import counters

    model = tiny_dit(depth=2)
    randomize_zero_init(model)
    gen = torch.Generator().manual_seed(0)
    b, s, n, d = 2, 3, 4, 8
    inputs = (
        torch.randn(b, s, n, d, generator=gen),
        torch.rand(b, generator=gen),
        torch.randn(b, 5, 16, generator=gen),
    )

    def run(m: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m.zero_grad()
        out = m(*inputs)
        out.pow(2).sum().backward()
        return out.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]

    expected, expected_grads = run(model)
    keys = set(model.state_dict())
    counters.clear()
    assert compile_model(model) is model  # in place: no wrapper, the same state-dict keys
    assert set(model.state_dict()) == keys
    got, grads = run(model)
    assert counters["frames"]["ok"] >= 1  # compiled for real
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert len(grads) == len(expected_grads) > 10
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    counters.clear()
    with eager():
        torch.testing.assert_close(run(model)[0], expected, rtol=1e-4, atol=1e-5)
    assert not counters["frames"]  # nothing traced under eager()
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    uncompile(model)
    assert all(block._compiled_call_impl is None for block in model.blocks)


class Indexed(nn.Module):
    """A block that reads its own integer attribute, as a causal LM's attention reads its layer index."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * (self.index + 1)


class IndexedStack(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Indexed(i) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_blocks_specialised_one_by_one_are_all_compiled():
    """12 blocks that each need a graph of their own: torch's default limit of 8 graphs would leave
    the last four eager (a warning only); compile_model raises the limit so all 12 compile."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    # torch's default, whatever ran before; config.patch restores it (monkeypatch's undo deletes the
    # attribute, which hides it from torch's config module for the rest of the process)
    with torch._dynamo.config.patch(recompile_limit=8):
        torch._dynamo.reset()
        counters.clear()
        model = IndexedStack(12)
        x = torch.randn(2, 4)
        with torch.no_grad():
            expected = model(x)
            compile_model(model, backend="eager")  # dynamo's graphs without kernels: seconds, not minutes
            got = model(x)
        assert counters["frames"]["ok"] == 12  # one graph per block, none left eager
        torch.testing.assert_close(got, expected)


def test_retained_graphs_compiles_backward_functions_without_donated_buffers():
    """The compiled quickstart autoencoder failed at its first step ("This backward function was
    compiled with non-empty donated buffers which requires ... retain_graph=False"): its adversarial
    term differentiates one graph twice. Inside ``retained_graphs`` torch compiles without them."""
    from sld.compilation import retained_graphs

    assert torch._functorch.config.donated_buffer
    with retained_graphs():
        assert not torch._functorch.config.donated_buffer
    assert torch._functorch.config.donated_buffer


def test_compile_options_are_set_one_at_a_time_from_the_command_line():
    from sld.config import load_config
    from sld.training import LoopConfig

    loop = load_config(LoopConfig, overrides=["compile_options.coordinate_descent_tuning=true"])
    assert loop.compile_options == {"coordinate_descent_tuning": True}
    assert load_config(LoopConfig).compile_options is None
