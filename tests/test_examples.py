"""The public-API examples run as written: train the three stages from Python on a tiny recipe, then
generate stories and summaries from the saved pipeline (the plotting examples run in test_viz.py)."""

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_from_python_then_generate(tmp_path, capsys):
    pipeline = load_example("train_from_python").main(
        [
            f"--out={tmp_path}",
            f"--autoencoder-config={ROOT / 'configs' / 'autoencoder_tiny.yaml'}",
            f"--diffusion-config={ROOT / 'configs' / 'diffusion_tiny.yaml'}",
            "--stories=40",
        ]
    )
    assert (tmp_path / "segmented" / "train.jsonl").is_file()
    assert (tmp_path / "autoencoder" / "autoencoder_config.json").is_file()
    assert pipeline == tmp_path / "diffusion" and (pipeline / "pipeline_config.json").is_file()
    assert "pipeline: " in capsys.readouterr().out

    generate = load_example("generate_stories_and_summaries")
    texts = generate.main([str(pipeline), "--steps=2", "--candidates=2", "--device=cpu"])
    printed = capsys.readouterr().out
    assert len(texts) == len(generate.SOURCES) == printed.count("\n[") + 1  # one block per source
    assert "[The Lost Dog]\n  1. " in printed
    again = generate.main([str(pipeline), "A Rainy Day", "--steps=2", "--device=cpu"])
    assert len(again) == 1


def test_step_memory_prints_the_same_loss_for_full_and_chunked_logits(tmp_path, capsys):
    import json

    import tiny_models

    lm = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"sentence": s}) + "\n" for s in ["Tom baked a cake.", "Anna ran home."])
    )
    example = load_example("step_memory")
    for mode in ("full", "chunked"):
        example.one_step(mode, lm, rows=2, pairs=str(pairs))
    full, chunked = capsys.readouterr().out.splitlines()
    assert full.startswith("full") and chunked.startswith("chunked")
    assert (
        full.split("conversion loss ")[1].split(",")[0] == chunked.split("conversion loss ")[1].split(",")[0]
    )
    assert "peak memory grew" in chunked


def test_compile_time_prints_every_step_of_a_mode(capsys):
    import argparse

    example = load_example("compile_time")
    for model in ("denoiser", "causal-lm"):
        args = argparse.Namespace(model=model, width=16, depth=2, heads=2, batch=2, device="cpu", steady=2)
        example.run_one("eager", args)  # the compiled modes take minutes; their code path is the same
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == len(example.STEPS) + 2
        assert lines[0].startswith("eager  step 0 (context 7, self-conditioning False):")
        assert lines[-2].startswith("eager  total ")
        assert lines[-1].startswith("eager  then ") and lines[-1].endswith("ms per step (2 steps)")


def test_graph_replay_overhead_runs_every_setting_on_a_cpu(capsys, monkeypatch):
    """A smoke test of the GPU example (on a CPU every backend traces with dynamo's eager backend): the
    LM cases run under the three backends with and without packed attention, the denoiser and the
    sampling loop (unfused, fused) under the three backends, a row each, and the later rows' outputs
    equal the first's."""
    monkeypatch.delenv("SLD_GRAPH_BACKEND", raising=False)
    monkeypatch.delenv("SLD_PACKED_GQA", raising=False)
    results = load_example("graph_replay_overhead").main(
        [
            "--device=cpu",
            "--layers=1",
            "--vocab-size=512",
            "--rows",
            "2",
            "--tokens=3",
            "--decode-rows=2",
            "--denoiser-batch=2",
            "--denoiser-width=64",
            "--calls=1",
            "--repeats=1",
            "--packed-gqa=both",
        ]
    )
    printed = capsys.readouterr().out
    # token step, decode, denoiser forward, ten sampling steps unfused and fused
    assert [len(by_variant) for by_variant in results.values()] == [6, 6, 3, 3, 3]
    assert printed.count("| (first) |") == 5 and printed.count("| True |") == 16
    assert printed.count("packed GQA | ") == 6  # the token step and the decode, for each backend
    assert "False" not in printed and "failed" not in printed
    assert printed.count(" / static_graphs (sld) = ") == 16
    assert printed.count(": fused step / scheduler step = ") == 3  # one per backend
    assert "SLD_FUSED_SAMPLER" not in os.environ
    assert "SLD_GRAPH_BACKEND" not in os.environ  # the example leaves the caller's choices as they were
    assert "SLD_PACKED_GQA" not in os.environ


def test_pair_copies_per_batch_counts_distinct_paraphrases():
    """A repeated pair file: length-grouped batches hold the copies of few pairs, shuffled ones many."""

    from sld.data.collate import PairDataset, PairMixDataset, SegmentDataset
    from sld.data.length_grouping import LengthGroupedSampler

    example = load_example("pair_copies_per_batch")
    segments = [[f"Segment number {i} " + "x" * (i % 40)] for i in range(300)]
    pairs = PairDataset([{"sentence": f"Pair {k}" + "y" * k, "paraphrase": f"Para {k}"} for k in range(10)])
    dataset = PairMixDataset(SegmentDataset(segments), pairs, 0.25)  # 100 pair rows: 10 copies a pair
    grouped = LengthGroupedSampler([len(str(dataset[i])) for i in range(len(dataset))], 40).batches()[:5]
    rows, distinct = example.pair_counts(dataset, grouped)
    assert distinct < rows  # copies of a pair share a batch
    order = list(range(len(dataset)))
    rows, distinct = example.pair_counts(dataset, [order[:40], order[40:80]])
    assert (rows, distinct) == (10.0, 10.0)  # consecutive rows: every 4th a pair row, all different


def test_prefix_lm_collate_cost_times_both_paths(tmp_path, capsys):
    import json

    import tiny_models

    folder = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    documents = tmp_path / "docs.jsonl"
    documents.write_text(
        "".join(json.dumps({"text": f"Anna walked {i}. Tom baked a cake."}) + "\n" for i in range(6))
    )
    load_example("prefix_lm_collate_cost").main(
        [str(folder), str(documents), "--batch", "4", "--repeats", "1"]
    )
    out = capsys.readouterr().out
    assert "batch of 4 rows" in out and "from text pairs:" in out and "less host time" in out


def test_padding_share_prints_a_share_per_batch_order(tmp_path, capsys):
    import tiny_models

    from sld.data.segmented import SegmentedDocument, write_segmented

    folder = tiny_models.save_tiny_causal_lm(tmp_path / "lm")
    words = ["Tom baked.", "It rose high in the warm oven all day long.", "Sam ate it."]
    docs = [SegmentedDocument(f"d{i}", f"Anna walked {i}.", words[: 1 + i % 3], 1 + i % 3) for i in range(12)]
    write_segmented(tmp_path / "seg" / "train.jsonl", docs)
    load_example("padding_share").main(
        [str(folder), str(tmp_path / "seg" / "train.jsonl"), "--batch-sizes", "4"]
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("12 rows")
    shares = [float(cell.rstrip("%")) for cell in out[-1].strip("| ").split(" | ")[1:]]
    assert len(shares) == 3 and all(0 < share <= 100 for share in shares)
    assert shares[2] >= shares[0]  # batches of similar token length hold less padding than random ones


def test_throughput_window_compares_the_same_steps(tmp_path, capsys):
    import json

    def run(name, rates):
        path = tmp_path / f"throughput_{name}_metrics.jsonl"
        rows = [
            {"step": step, "train/items_per_second": rate, "train/contrastive": step / 1000}
            for step, rate in rates
        ]
        if name == "after":  # MFU logged by one run only
            for row in rows:
                row["train/mfu"] = row["train/items_per_second"] / 1000
        rows.append({"step": 999, "eval/bleu": 1.0})  # an evaluation row has no rate
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    before = run("before", [(50, 1.0), (100, 100.0), (200, 300.0), (300, 5.0)])
    after = run("after", [(100, 400.0), (200, 400.0), (250, 1.0)])
    lines = load_example("throughput_window").main(
        [str(before), str(after), "--steps", "100", "200", "--metric", "train/contrastive"]
    )
    assert lines[2] == "| throughput_before | 2 | 200 | 1.00x | - | 0.2 |"
    assert lines[3] == "| throughput_after | 2 | 400 | 2.00x | 40.00% | 0.2 |"
    assert capsys.readouterr().out.startswith("steps 100-200\n")
    # per-row counters summed over the window (e.g. the allocator's cudaMalloc calls); one never logged
    lines = load_example("throughput_window").main(
        [str(before), str(after), "--steps", "100", "200"]
        + ["--total", "train/contrastive", "--total", "train/cuda_mallocs"]
    )
    assert lines[0].endswith("| MFU | train/contrastive (sum) | train/cuda_mallocs (sum) |")
    assert lines[2].endswith("| 0.3 | - |") and lines[3].endswith("| 0.3 | - |")  # 0.1 + 0.2
    compiling = run("compiling", [(10, 5.0)])  # no row in the window: dashes, not nan
    lines = load_example("throughput_window").main([str(compiling), str(after), "--steps", "100", "200"])
    assert lines[2:] == [
        "| throughput_compiling | 0 | - | - | - |",
        "| throughput_after | 2 | 400 | - | 40.00% |",
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(SystemExit, match="bad.jsonl:2"):
        load_example("throughput_window").main([str(bad)])


# Excerpt (header, per-step digest, the CUDA table's first rows and totals) of a profile.txt that
# `loop.profile_steps=20` wrote on an H200 (the paper-size denoiser, 2026-12-04)
H200_PROFILE = "torch.profiler summary of 20 optimizer steps after 3 warm-up steps on cuda (264.9 ms per step with the profiler on).\nsld.loss_fn / sld.backward / sld.optimizer are the phases of a step; 'enumerate(DataLoader)' rows are data loading.\n\nPer step: 264.9 ms of wall time with the profiler on\n  device busy 159.9 ms (60% of the wall time; the rest the device waited on the host), 2,086 kernel launches\n  host syncs: 0.2 a step, 2.1 ms waiting (cudaStreamSynchronize x2, cudaDeviceSynchronize x2)\n  data loading (next batch): 22.0 ms\n  named ranges on the device, ms a step: sld.loss_fn 74.6, sld.dm.denoiser 49.0, sld.dm.self_conditioning 23.2, Optimizer.step#AdamW.step 1.5, sld.backward 0.0\n\n\nTop operators by self CUDA time:\n\n-------------------------------------------------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  \n                                                   Name    Self CPU %      Self CPU   CPU total %     CPU total  CPU time avg     Self CUDA   Self CUDA %    CUDA total  CUDA time avg    # of Calls  \n-------------------------------------------------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  \n                                            sld.loss_fn         0.00%       0.000us         0.00%       0.000us       0.000us        1.491s        46.62%        1.491s      74.560ms            20  \n                                        sld.dm.denoiser         0.00%       0.000us         0.00%       0.000us       0.000us     979.409ms        30.62%     979.409ms      48.970ms            20  \n                                               aten::mm         2.84%     132.808ms         4.74%     221.507ms      50.804us     840.828ms        26.29%     840.828ms     192.850us          4360  \n                                            aten::addmm         2.94%     137.501ms         4.29%     200.533ms      61.138us     656.476ms        20.52%     675.558ms     205.963us          3280  \n                               sld.dm.self_conditioning         0.00%       0.000us         0.00%       0.000us       0.000us     463.156ms        14.48%     463.156ms      46.316ms            10  \n                    aten::_efficient_attention_backward         0.27%      12.504ms         0.82%      38.439ms      80.081us     196.926ms         6.16%     196.926ms     410.262us           480  \n         nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN         0.00%       0.000us         0.00%       0.000us       0.000us     172.602ms         5.40%     172.602ms     278.390us           620  \n-------------------------------------------------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  ------------  \nSelf CPU time total: 4.676s\nSelf CUDA time total: 3.199s\n"


def test_step_breakdown_reads_new_and_old_profiles(tmp_path, capsys):
    step_breakdown = load_example("step_breakdown")
    new = tmp_path / "after_profile.txt"
    new.write_text(H200_PROFILE)
    # an older code's summary: no per-step digest; the device time comes from the table's total
    # (3.199 s over 20 steps)
    old = tmp_path / "before_profile.txt"
    old.write_text(
        "\n".join(
            line
            for line in H200_PROFILE.splitlines()
            if not line.startswith(("Per step", "  device", "  host", "  data", "  named"))
        )
    )
    profile = step_breakdown.read_profile(new)
    assert (profile.steps, profile.wall_ms, profile.busy_ms, profile.launches) == (20, 264.9, 159.9, 2086)
    assert (profile.syncs, profile.loading_ms) == (0.2, 22.0)
    names = [name for name, _ in profile.operators]
    assert names == [
        "aten::mm",
        "aten::addmm",
        "aten::_efficient_attention_backward",
    ]  # ranges and kernels left out
    assert profile.operators[0][1] == pytest.approx(840.828 / 20)
    lines = step_breakdown.main([str(new), str(old), "--top", "2"])
    assert lines[2] == (
        "| after_profile | 20 | 264.9 | 159.9 (60%) | - | 2,086 | 0.2 | 22.0 | 47% | 6% | mm 42.0, addmm 32.8 |"
    )
    assert lines[3].startswith("| before_profile | 20 | 264.9 | 159.9 (60%) | - | - | - | - | 47% | 6% |")
    assert capsys.readouterr().out.splitlines() == lines
    # the digest's idle line: the total and the host phase with the largest part of it
    idle = tmp_path / "idle_profile.txt"
    idle.write_text(
        new.read_text().replace(
            "  host syncs:",
            "  device idle between kernels: 20.5 ms a step, while the host was in sld.loss_fn 12.0, "
            "sld.backward 3.0, sld.optimizer 0.5, data loading 1.0, between phases 4.0\n  host syncs:",
        )
    )
    profile = step_breakdown.read_profile(idle)
    assert profile.idle_ms == 20.5
    assert profile.idle_parts[0] == ("sld.loss_fn", 12.0) and profile.idle_parts[-1] == (
        "between phases",
        4.0,
    )
    assert "| 159.9 (60%) | 20.5 (sld.loss_fn 12.0) | 2,086 |" in step_breakdown.table([idle])[2]
    # the digest's kernel-kind line: a second table, a row per run that has it, 0.0 where a kind is absent
    kinds = tmp_path / "kinds_profile.txt"
    kinds.write_text(
        new.read_text().replace(
            "  host syncs:",
            "  device time by kernel kind, ms a step: matrix products 80.0, attention 17.5, "
            "fused pointwise (Triton) 30.2\n  host syncs:",
        )
    )
    assert step_breakdown.read_profile(kinds).kinds[-1] == ("fused pointwise (Triton)", 30.2)
    lines = step_breakdown.table([kinds, new])
    assert lines[-5:] == [
        "Device ms a step by kernel kind:",
        "",
        "| run | matrix products | attention | fused pointwise (Triton) |",
        "|---|---|---|---|",
        "| kinds_profile | 80.0 | 17.5 | 30.2 |",
    ]
    assert not any("by kernel kind" in line for line in step_breakdown.table([new]))
    with pytest.raises(SystemExit, match="not_a_profile.txt: not a profile.txt"):
        bad = tmp_path / "not_a_profile.txt"
        bad.write_text("hello\n")
        step_breakdown.main([str(bad)])


def write_two_stories(segmented: Path) -> Path:
    """A stage-1 folder of two short stories, eight copies each (train) and two of them (valid)."""
    from sld.data.segmented import SegmentedDocument, write_segmented

    stories = [["Tom lost his dog.", "He looked everywhere."], ["Anna baked a cake.", "It burned."]] * 8
    docs = [SegmentedDocument(f"d{i}", None, story, len(story)) for i, story in enumerate(stories)]
    write_segmented(segmented / "train.jsonl", docs)
    write_segmented(segmented / "valid.jsonl", docs[:2])
    return segmented


@pytest.mark.slow
def test_cast_census_counts_the_casts_of_one_autocast_step(tmp_path, capsys):
    segmented = write_two_stories(tmp_path / "segmented")
    lines = load_example("cast_census").main(
        ["-c", str(ROOT / "configs" / "autoencoder_tiny.yaml"), f"data.segmented_dir={segmented}", "--rows=8"]
    )
    forward, backward = [line for line in lines if not line.startswith(" ")]
    assert forward.startswith("forward: ") and backward.startswith("backward: ")
    assert int(forward.split(", ")[1].split()[0]) > 0  # the linear layers' float32 weights at least
    assert "torch.float32 -> torch.bfloat16" in "\n".join(lines)
    (parts,) = [line for line in lines if line.startswith("  by part: ")]  # the forward's, by part
    assert "decoder" in parts
    assert re.search(r"encode \d+ \(1 calls\)", parts)  # the rows and their second view: one call


@pytest.mark.slow
def test_eager_remainder_counts_what_runs_outside_the_compiled_blocks(tmp_path, capsys):
    segmented = write_two_stories(tmp_path / "segmented")
    config = str(ROOT / "configs" / "autoencoder_tiny.yaml")
    lines = load_example("eager_remainder").main(
        ["-c", config, f"data.segmented_dir={segmented}", "data.fixed_decoder_length=true", "--rows=8"]
    )
    heads = [line for line in lines if not line.startswith(" ")]
    assert [head.split(":")[0] for head in heads] == ["forward", "backward"]
    pattern = r"\w+: (\d+) compiled graph calls, (\d+) eager aten ops outside them, (\d+) of them not views"
    counts = [[int(n) for n in re.match(pattern, head).groups()] for head in heads]
    (fw_graphs, fw_ops, fw_launching), (bw_graphs, bw_ops, bw_launching) = counts
    assert fw_graphs >= 2 and bw_graphs >= 1  # the tiny model's repeated blocks ran compiled, both ways
    assert 0 < fw_launching < fw_ops and 0 < bw_launching < bw_ops  # losses, gradients; and detaches
    forward_origins = lines[lines.index("  by origin:") + 1 : lines.index(heads[1])]
    assert any(re.match(r"\s+\d+ x sld/.+\.py\(\d+\)", line) for line in forward_origins)


def test_decoder_padding_prints_the_real_share_per_bucket_count(tmp_path, capsys):
    from sld.data.segmented import SegmentedDocument, write_segmented

    segmented = tmp_path / "segmented"
    stories = [["Tom lost his dog.", "He looked everywhere for it until it was dark and cold outside."]] * 8
    stories += [["Anna baked a cake.", "It burned."]] * 8
    docs = [SegmentedDocument(f"d{i}", None, story, len(story)) for i, story in enumerate(stories)]
    write_segmented(segmented / "train.jsonl", docs)
    write_segmented(segmented / "valid.jsonl", docs[:2])
    results = load_example("decoder_padding").main(
        ["-c", str(ROOT / "configs" / "autoencoder_tiny.yaml"), f"data.segmented_dir={segmented}"]
        + ["loop.batch_size=16", "data.decode_budget_percentile=50", "--batches=3", "--max-buckets=3"]
    )
    assert [(buckets, cut) for buckets, cut, _, _ in results] == [
        (b, cut) for b in (1, 2, 3) for cut in (False, True)
    ]
    shares = [share for _, cut, share, _ in results if not cut]
    assert 0 < shares[0] < shares[1] <= shares[2] <= 1  # a long and a short length: two buckets pay
    whole_positions, cut_positions = results[0][3], results[1][3]
    # the budget is the median length: the long sentences' targets are cut, one bucket pads less
    assert cut_positions < whole_positions and results[1][2] > results[0][2]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 8  # header, rule, six rows
    load_example("decoder_padding").main(
        ["-c", str(ROOT / "configs" / "autoencoder_tiny.yaml"), f"data.segmented_dir={segmented}"]
        + ["loop.batch_size=16", "data.decode_budget_percentile=50", "--batches=1", "--max-buckets=1"]
        + ["--flops-rows=8"]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    whole, cut = (float(row.split("|")[-2]) for row in rows)
    assert 0 < cut <= whole  # the FLOPs column: cut targets compute no more


def test_adamw_step_time_times_every_variant(tmp_path, capsys):
    from tiny_systems import save_tiny_systems

    sld_dir, _ = save_tiny_systems(tmp_path)
    lines = load_example("adamw_step_time").main(
        [str(sld_dir / "autoencoder"), "--steps", "2", "--threads", "1"]
    )
    assert lines[0].endswith("threads") and int(lines[0].split()[0]) > 0
    assert [line.split("  ")[0] for line in lines[1:]] == ["per-parameter loop", "foreach", "fused"]
    assert all(float(line.split()[-4]) > 0 for line in lines[1:])  # "<ms> ms a step"


def test_unmasked_batches_counts_the_batches_without_a_padded_segment(tmp_path, capsys):
    from sld.data.segmented import SegmentedDocument, write_segmented

    segmented = tmp_path / "segmented"
    docs = [SegmentedDocument(f"f{i}", "s", ["a.", "b.", "c."], 3) for i in range(30)]
    docs += [SegmentedDocument(f"s{i}", "s", ["a."], 1) for i in range(2)]  # two short documents
    write_segmented(segmented / "train.jsonl", docs)
    unmasked = load_example("unmasked_batches")
    counts = [3] * 30 + [1, 1]
    assert unmasked.unmasked_share([[0, 1], [2, 30]], counts, 3) == 0.5
    ((batch_size, random, grouped),) = unmasked.main(
        [str(segmented), "--max-segments", "3", "--batch-sizes", "8"]
    )
    # 4 full batches an epoch; grouped, both short documents share one batch, so 3 of 4 are whole
    assert batch_size == 8 and grouped == 0.75
    # random: each epoch a permutation of every document cut into 4 full batches, 2 of them whole
    # (the short documents apart) or 3 (together); the printed share is the mean over the 5 epochs
    from sld.data.segmented import read_split

    shares = []
    for epoch in range(5):
        batches = unmasked.epoch_batches(read_split(segmented, "train"), 3, 8, grouped=False, epoch=epoch)
        assert [len(b) for b in batches] == [8] * 4 and sorted(i for b in batches for i in b) == list(
            range(32)
        )
        shares.append(unmasked.unmasked_share(batches, counts, 3))
    assert set(shares) <= {0.5, 0.75} and random == pytest.approx(sum(shares) / 5)
    assert "| 8 | " in capsys.readouterr().out


def test_masked_attention_kernels_times_what_runs_and_names_what_refuses(capsys):
    args = [
        "--batch",
        "2",
        "--heads",
        "2",
        "--queries",
        "4",
        "--keys",
        "4",
        "3",
        "--head-dim",
        "8",
        "--repeat",
        "1",
    ]
    rows = load_example("masked_attention_kernels").main(args)
    assert [row["keys"] for row in rows] == [4] * 4 + [3] * 4
    timed = {row["kernel"] for row in rows if row["ms"] is not None}
    assert "math" in timed
    out = capsys.readouterr().out
    assert "L_k=3" in out and "max |out - math| 0.00e+00" in out
    if not torch.cuda.is_available():  # the fused masked kernels are CUDA's
        assert out.count("efficient       not available") == 2


def test_encoder_cache_build_time_compares_first_seen_order_with_like_lengths(tmp_path, capsys):
    import json

    import tiny_models

    from sld.data.segmented import SegmentedDocument, write_segmented

    bert = tiny_models.save_tiny_bert(tmp_path / "bert")
    tiny_models.tiny_autoencoder(bert, seed=0).save_pretrained(tmp_path / "autoencoder")  # a frozen encoder
    docs = [
        SegmentedDocument(f"d{i}", "t", ["Anna ran.", "It rained all day long today.", f"Day {i % 2}."], 3)
        for i in range(3)
    ]
    write_segmented(tmp_path / "segmented" / "train.jsonl", docs)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"sentence": "Anna ran.", "paraphrase": "Anna jogged.", "negative": "Oil."}) + "\n"
    )
    result = load_example("encoder_cache_build_time").main(
        [
            str(tmp_path / "autoencoder"),
            str(tmp_path / "segmented"),
            "--pairs",
            str(pairs),
            "--batch-size",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "6 distinct texts, batches of 2" in out
    assert result["first_seen_s"] > 0 and result["sorted_s"] > 0 and result["max_diff"] < 1e-4


def test_latent_encoding_time_compares_every_slot_with_each_distinct_text(tmp_path, capsys):
    from tiny_systems import save_tiny_systems

    from sld.data.segmented import SegmentedDocument, write_segmented

    sld_dir, _ = save_tiny_systems(tmp_path)
    docs = [
        SegmentedDocument(f"d{i}", "t", ["Anna ran.", "It rained.", f"Day {i % 2}."], 3) for i in range(6)
    ]
    write_segmented(tmp_path / "segmented" / "train.jsonl", docs)
    result = load_example("latent_encoding_time").main(
        [
            str(sld_dir / "autoencoder"),
            str(tmp_path / "segmented"),
            "--max-segments",
            "3",
            "--batch-size",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert "6 documents, 18 segment slots, 4 distinct texts" in out
    assert result["every_slot_s"] > 0 and result["distinct_s"] > 0 and result["max_diff"] < 2e-3
