"""sld.eval.autoencoder_report and `sld autoencoder-report`: reconstruction, robustness curve, smoothness."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import PAIRS, save_tiny_bert, tiny_autoencoder

from sld.errors import DataError, UserError
from sld.eval.autoencoder_report import (
    autoencoder_report,
    decode_with_noise,
    markdown_table,
    plot_robustness,
)
from sld.viz.latent_map import PairTexts
from stages import autoencoder_report as stage

SEGMENTS = ["Anna walked her dog.", "It rained all day.", "Tom baked a cake."]


class CodebookAutoencoder:
    """A stand-in whose latent i decodes to segment i exactly, and to "" once noise moved it away."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, segments):
        self.segments = list(segments)
        self.seen: list[torch.Tensor] = []

    def eval(self):
        return self

    def encode_texts(self, texts, batch_size=64):
        z = torch.zeros(len(texts), 2, 4)
        for row, text in enumerate(texts):
            z[row, 0, 0] = self.segments.index(text) + 1
        return z

    def decode_latents(self, z, max_new_tokens=None, num_beams=1):
        self.seen.append(z.clone())
        out = []
        for row in z:
            code = float(row[0, 0])
            exact = torch.count_nonzero(row).item() == 1 and code == round(code)
            out.append(self.segments[int(code) - 1] if exact else "")
        return out


def test_curve_is_exact_without_noise_and_collapses_with_it():
    model = CodebookAutoencoder(SEGMENTS)
    report = autoencoder_report(model, SEGMENTS, name="codebook", noise_levels=[0.5, 0.0, 0.1, 0.5])
    assert [p.noise_std for p in report.curve] == [0.0, 0.1, 0.5]  # 0 first, sorted, deduplicated
    assert report.bleu == pytest.approx(100.0) and report.exact_match == 1.0
    assert all(p.bleu == 0.0 and p.exact_match == 0.0 for p in report.curve[1:])
    assert report.examples[0] == {"segment": SEGMENTS[0], "clean": SEGMENTS[0], "noise_0.5": ""}
    assert report.smoothness is None and report.to_dict()["robustness"][0]["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="noise levels"):
        autoencoder_report(model, SEGMENTS, noise_levels=[-0.1])


def test_noise_is_seeded_scaled_and_optionally_renormalised():
    model = CodebookAutoencoder(SEGMENTS)
    latents = torch.randn(3, 2, 4)
    decode_with_noise(model, latents, 0.3, seed=7)
    decode_with_noise(model, latents, 0.3, seed=7)
    first, again = model.seen
    assert torch.equal(first, again) and not torch.equal(first, latents)
    expected = latents + 0.3 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, expected)
    decode_with_noise(model, latents, 0.3, seed=7, renormalize=True)
    torch.testing.assert_close(model.seen[-1].norm(dim=-1), torch.full((3, 2), 2.0))  # sqrt(D), D = 4
    model.seen.clear()
    decode_with_noise(model, latents, 0.0, batch_size=2)
    assert [z.shape[0] for z in model.seen] == [2, 1] and torch.equal(torch.cat(model.seen), latents)


def test_table_and_plot_on_real_tiny_models(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert")
    pairs = PairTexts(*map(list, zip(*PAIRS)))
    reports = [
        autoencoder_report(
            tiny_autoencoder(bert, seed), SEGMENTS, f"ae{seed}", pairs, [0.2, 1.0], num_examples=2
        )
        for seed in (0, 1)
    ]
    for report in reports:
        assert len(report.curve) == 3 and all(0.0 <= p.bleu <= 100.0 for p in report.curve)
        assert math.isfinite(report.smoothness.ratio) and report.num_pairs == len(PAIRS)
        assert len(report.examples) == 2
    table = markdown_table(reports).splitlines()
    assert len(table) == 4 and table[0].count("|") == 7  # name, BLEU, EM, 2 noise levels, ratio
    assert table[2].startswith("| ae0 | ") and f"{reports[1].smoothness.ratio:.3f}" in table[3]
    figure = plot_robustness(reports)
    assert len(figure.axes) == 2 and all(len(ax.lines) == 2 for ax in figure.axes)
    assert list(figure.axes[0].lines[0].get_xdata()) == [0.0, 0.2, 1.0]


def test_stage_writes_report_files(tmp_path, capsys):
    bert = save_tiny_bert(tmp_path / "bert")
    for seed in (0, 1):
        tiny_autoencoder(bert, seed).save_pretrained(tmp_path / f"ae{seed}")
    segmented = tmp_path / "seg"
    segmented.mkdir()
    docs = [{"id": f"d{i}", "source": "t", "segments": SEGMENTS[i:], "num_segments": 3 - i} for i in range(3)]
    (segmented / "valid.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"sentence": s, "paraphrase": p, "negative": n}) + "\n" for s, p, n in PAIRS)
    )
    out = tmp_path / "report"
    argv = [
        f"autoencoders=[{tmp_path / 'ae0'},{tmp_path / 'ae1'}]",
        f"segments={segmented}",
        "num_segments=4",
        f"pairs={pairs}",
        "noise_levels=[0.5]",
        f"output_dir={out}",
        "formats=[png]",
    ]
    assert stage.main(argv) == 0
    numbers = json.loads((out / "report.json").read_text())
    assert [r["num_segments"] for r in numbers["reports"]] == [4, 4]
    assert [p["noise_std"] for p in numbers["reports"][0]["robustness"]] == [0.0, 0.5]
    assert (out / "robustness.png").stat().st_size > 0 and (out / "report.md").is_file()
    printed = capsys.readouterr().out
    assert "| ae0 |" in printed and "para/neg ratio" in printed

    assert stage.main([f"segments={tmp_path / 'missing.jsonl'}", f"autoencoders=[{tmp_path / 'ae0'}]"]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err
    assert stage.main([f"autoencoders=[{tmp_path / 'ae0'}]", "labels=[a,b]", f"segments={segmented}"]) == 2
    assert "labels: 2 labels for 1 autoencoders" in capsys.readouterr().err


def test_load_segments_reads_a_file_or_its_folder_in_order(tmp_path):
    from sld.eval.autoencoder_report import load_segments

    docs = [{"id": "a", "source": None, "segments": ["s1", "s2"], "num_segments": 2}]
    docs.append({"id": "b", "source": None, "segments": ["s3"], "num_segments": 1})
    (tmp_path / "valid.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert load_segments(tmp_path, 10) == ["s1", "s2", "s3"]
    assert load_segments(tmp_path / "valid.jsonl", 2) == ["s1", "s2"]
    with pytest.raises(UserError, match="num_segments must be >= 1"):
        load_segments(tmp_path, 0)
    (tmp_path / "empty.jsonl").write_text("")
    # read_segmented itself refuses an empty stage-1 file
    with pytest.raises(DataError, match=r"empty.jsonl: no (documents|segments)"):
        load_segments(tmp_path / "empty.jsonl", 3)
