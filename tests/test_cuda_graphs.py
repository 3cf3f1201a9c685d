"""``static_graphs``: which inputs a replay uses in place and which it copies.

A CPU cannot record CUDA graphs, so every graph here runs its traced kernels eagerly (after the
backend's checks); what is tested is the plan a GPU would replay with (the ``inspect`` hook), and that
the graph, with writes into the static cache kept inside it, decodes and samples what eager code does.
"""

import pytest
import tiny_models
import torch

from sld.diffusion import sampling
from sld.models import cuda_graphs, static_decoding

SOURCES = ["Anna walked her dog.", None, "Lucy", "Sam fixed the old bike today and then he rode it home."]


def placeholder_names(graph_module: torch.fx.GraphModule) -> list[str]:
    return [node.name for node in graph_module.graph.find_nodes(op="placeholder")]


@pytest.fixture
def recorded_plans(monkeypatch):
    """Compile every traced step with ``static_graphs`` on the CPU; yield the (names, plan) of each."""
    plans = []
    backend = cuda_graphs.static_graphs_backend(
        inspect=lambda graph_module, plan: plans.append((placeholder_names(graph_module), plan))
    )
    monkeypatch.setattr(static_decoding, "replay_backend", lambda device: backend)
    monkeypatch.setattr(sampling, "denoiser_replay_backend", lambda device: backend)
    monkeypatch.setattr(cuda_graphs, "_REPLAYED", {})
    graphed = sampling.graphed_denoiser
    monkeypatch.setattr(sampling, "graphed_denoiser", lambda model: graphed(model, trace_on_cpu=True))
    return plans


def test_the_token_step_uses_weights_and_cache_in_place_and_copies_only_its_inputs(
    tmp_path, monkeypatch, recorded_plans
):
    model = tiny_models.tiny_prefix_lm(tmp_path / "lm")
    original = static_decoding.stepper_for
    monkeypatch.setattr(static_decoding, "stepper_for", lambda lm, compile_step: original(lm, True))
    dynamic = model.generate_texts(SOURCES, batch_size=4, max_new_tokens=12)
    static = model.generate_texts(SOURCES, batch_size=4, max_new_tokens=12, static_cache=True)
    assert static == dynamic and len(set(dynamic)) > 1
    assert recorded_plans
    for names, plan in recorded_plans:
        static_names = {names[i] for i in plan.static}
        copied = set(names) - static_names
        weights = {n for n in names if "_parameters_" in n or "_buffers_" in n}
        cache = {n for n in names if "cache_layers" in n}
        assert weights and cache
        assert weights <= static_names and cache <= static_names
        assert copied == {n for n in names if n.split("_")[1] in ("ids", "positions", "mask")}
        # the step writes into the cache (keys and values of every layer), in place
        written = {names[i] for i in plan.mutated}
        assert {n for n in cache if n.endswith(("_keys", "_values"))} <= written <= static_names
        assert plan.skip is not None and "cpu device" in plan.skip  # and nothing else stops a GPU


def test_the_context_encoder_graph_uses_its_weights_in_place_and_copies_only_the_tokens(monkeypatch):
    """The encoder of SLD's sources as a graph (``ContextEncoder.encode(graph_bucket=...)``): traced
    whole, its weights and buffers used where they are, only the token ids and mask copied."""
    from sld.models import context_encoder

    plans = []
    backend = cuda_graphs.static_graphs_backend(
        inspect=lambda graph_module, plan: plans.append((placeholder_names(graph_module), plan))
    )
    monkeypatch.setattr(cuda_graphs, "_REPLAYED", {})
    monkeypatch.setattr(cuda_graphs, "replay_backend", lambda device: backend)
    graphed = context_encoder.graphed_encoder
    monkeypatch.setattr(
        context_encoder, "graphed_encoder", lambda encoder: graphed(encoder, trace_on_cpu=True)
    )
    encoder = context_encoder.ContextEncoder.from_pretrained(max_length=16)
    eager, _ = encoder.encode(["A short source.", "A second one."])
    states, _ = encoder.encode(["A short source.", "A second one."], graph_bucket=8)
    torch.testing.assert_close(states[:, : eager.shape[1]], eager, rtol=1e-4, atol=1e-5)
    assert len(plans) == 1
    names, plan = plans[0]
    static_names = {names[i] for i in plan.static}
    assert {n for n in names if "_parameters_" in n} <= static_names
    assert set(names) - static_names == {n for n in names if n.split("_")[1] in ("input", "attention")}
    assert (
        not plan.mutated and plan.skip is not None and "cpu device" in plan.skip
    )  # nothing else stops a GPU


def test_the_token_step_through_inductor_decodes_as_the_eager_step(tmp_path, monkeypatch):
    """``inductor_graphs`` compiles the real static-cache step (its writes into the cache included):
    on the CPU Inductor generates C++ kernels and leaves CUDA graphs out, and the greedy texts are the
    dynamic loop's."""
    model = tiny_models.tiny_prefix_lm(tmp_path / "lm")
    compiled = []

    def backend(graph_module, example_inputs):
        compiled.append(graph_module)
        return cuda_graphs.inductor_graphs(graph_module, example_inputs)

    monkeypatch.setattr(static_decoding, "replay_backend", lambda device: backend)
    original = static_decoding.stepper_for
    monkeypatch.setattr(static_decoding, "stepper_for", lambda lm, compile_step: original(lm, True))
    monkeypatch.setattr(static_decoding, "_STEPPERS", type(static_decoding._STEPPERS)())
    dynamic = model.generate_texts(SOURCES, batch_size=4, max_new_tokens=12)
    static = model.generate_texts(SOURCES, batch_size=4, max_new_tokens=12, static_cache=True)
    assert compiled, "the step never went through the backend"
    assert static == dynamic and len(set(dynamic)) > 1


def test_the_graphed_denoiser_uses_its_weights_in_place(recorded_plans):
    model = tiny_models.tiny_dit()
    tiny_models.randomize_zero_init(model)
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(3, 5, model.config.context_dim, generator=gen)
    context_mask = torch.ones(3, 5, dtype=torch.bool)
    context_mask[1, 2:] = False
    kwargs = dict(num_segments=torch.tensor([3, 2, 1]), num_inference_steps=3)

    def sample(graphed: bool) -> torch.Tensor:
        scheduler = sampling.make_scheduler("dpm++")
        generator = torch.Generator().manual_seed(1)
        return sampling.sample_latents(
            model, scheduler, context, context_mask, generator=generator, graphed=graphed, **kwargs
        )

    eager = sample(graphed=False)
    torch.testing.assert_close(sample(graphed=True), eager)
    assert recorded_plans
    for names, plan in recorded_plans:
        weights = {i for i, n in enumerate(names) if "_parameters_" in n or "_buffers_" in n}
        assert len(weights) > len(list(model.parameters())) / 2  # those the forward uses
        # the weights in place; the noisy latents, the timesteps and the context copied
        assert set(plan.static) == weights and len(names) > len(weights)
        assert not plan.mutated


def test_a_graph_that_writes_into_a_copied_input_runs_without_one():
    """Only static inputs may be written by a replay (a copy-in buffer would lose the write)."""
    from torch._dynamo.utils import counters

    plans = []
    backend = cuda_graphs.static_graphs_backend(inspect=lambda graph_module, plan: plans.append(plan))

    def add_into(x: torch.Tensor) -> torch.Tensor:
        return x.add_(1)

    step = torch.compile(add_into, backend=backend, fullgraph=True)
    before = counters["inductor"]["cudagraph_skips"]
    x = torch.zeros(3)
    step(x)
    assert torch.equal(x, torch.ones(3))  # the write reached the caller's tensor
    assert "mutated inputs" in plans[0].skip
    assert counters["inductor"]["cudagraph_skips"] == before + 1


def test_replay_backend_is_eager_off_cuda_and_chosen_by_the_environment_on_cuda(monkeypatch):
    from sld.errors import UserError

    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("SLD_GRAPH_BACKEND", raising=False)
    assert cuda_graphs.replay_backend(torch.device("cpu")) == "eager"
    assert cuda_graphs.replay_backend(cuda) is cuda_graphs.static_graphs
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "cudagraphs")
    assert cuda_graphs.replay_backend(cuda) == "cudagraphs"
    assert cuda_graphs.replay_backend(torch.device("cpu")) == "eager"
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "inductor")
    assert cuda_graphs.replay_backend(cuda) is cuda_graphs.inductor_graphs
    assert cuda_graphs.replay_backend(torch.device("cpu")) == "eager"
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "aot_eager")
    with pytest.raises(UserError, match="SLD_GRAPH_BACKEND='aot_eager'"):
        cuda_graphs.replay_backend(cuda)


def test_the_denoiser_backend_follows_the_global_one_unless_its_own_is_set(monkeypatch):
    from sld.errors import UserError

    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("SLD_DENOISER_GRAPH_BACKEND", raising=False)
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "cudagraphs")
    assert cuda_graphs.denoiser_replay_backend(cuda) == "cudagraphs"
    monkeypatch.setenv("SLD_DENOISER_GRAPH_BACKEND", "inductor")
    assert cuda_graphs.denoiser_replay_backend(cuda) is cuda_graphs.inductor_graphs
    assert cuda_graphs.replay_backend(cuda) == "cudagraphs"  # the LM's token step keeps the global one
    assert cuda_graphs.denoiser_replay_backend(torch.device("cpu")) == "eager"
    monkeypatch.setenv("SLD_DENOISER_GRAPH_BACKEND", "fast")
    with pytest.raises(UserError, match="SLD_DENOISER_GRAPH_BACKEND='fast'"):
        cuda_graphs.denoiser_replay_backend(cuda)
    monkeypatch.delenv("SLD_DENOISER_GRAPH_BACKEND")
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "fast")  # an error names the variable the value came from
    with pytest.raises(UserError, match="^SLD_GRAPH_BACKEND='fast'"):
        cuda_graphs.denoiser_replay_backend(cuda)


def test_a_blocks_graph_backend_comes_before_the_environments(monkeypatch):
    """``graph_backend`` (a benchmark setting's own backend) chooses every graph's backend inside its
    block, the denoiser's too unless ``denoiser_graph_backend`` names its own; outside, the environment."""
    from sld.errors import UserError

    cuda = torch.device("cuda", 0)
    monkeypatch.setenv("SLD_GRAPH_BACKEND", "cudagraphs")
    monkeypatch.setenv("SLD_DENOISER_GRAPH_BACKEND", "cudagraphs")
    with cuda_graphs.graph_backend("inductor"):
        assert cuda_graphs.graph_backend_choice() == "inductor"
        assert cuda_graphs.replay_backend(cuda) is cuda_graphs.inductor_graphs
        assert cuda_graphs.denoiser_replay_backend(cuda) is cuda_graphs.inductor_graphs
        with cuda_graphs.denoiser_graph_backend("static"):
            assert cuda_graphs.denoiser_replay_backend(cuda) is cuda_graphs.static_graphs
            assert cuda_graphs.replay_backend(cuda) is cuda_graphs.inductor_graphs
        assert cuda_graphs.replay_backend(torch.device("cpu")) == "eager"
    with cuda_graphs.graph_backend(None):  # None changes nothing
        assert cuda_graphs.replay_backend(cuda) == "cudagraphs"
    assert cuda_graphs.denoiser_replay_backend(cuda) == "cudagraphs"
    with pytest.raises(UserError, match="graph_backend='fast'"):
        with cuda_graphs.graph_backend("fast"):
            pass


def test_each_graph_backend_keeps_its_own_token_stepper(tmp_path):
    """Settings that alternate backends reuse their compiled steps instead of replacing one another's."""
    model = tiny_models.tiny_prefix_lm(tmp_path / "lm")
    lm = model.lm
    with cuda_graphs.graph_backend("inductor"):
        inductor = static_decoding.stepper_for(lm, True)
    with cuda_graphs.graph_backend("static"):
        static = static_decoding.stepper_for(lm, True)
    assert inductor is not static and (inductor.backend_name, static.backend_name) == ("inductor", "static")
    with cuda_graphs.graph_backend("inductor"):
        assert static_decoding.stepper_for(lm, True) is inductor
    eager = static_decoding.stepper_for(lm, False)
    assert eager.backend_name is None and static_decoding.stepper_for(lm, False) is eager
