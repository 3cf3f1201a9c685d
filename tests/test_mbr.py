"""sld.mbr: the MBR choice among candidates, and the rule that inference does not import evaluation."""

import subprocess
import sys

import pytest

from sld.eval import metrics as M
from sld.mbr import mbr_select, rouge2_agreement


def test_mbr_majority_candidate_wins_ties_go_first():
    candidates = ["dog ran fast", "the cat sat on the mat", "the cat sat on the mat", "the cat sat on a mat"]
    assert mbr_select(candidates) == 1


def test_mbr_edge_cases():
    assert mbr_select(["only one"]) == 0
    assert mbr_select(["a b", "c d", "e f"]) == 0  # all zero: first
    assert mbr_select(["x y z", "the cat sat", "the cat sat down"]) in (1, 2)
    with pytest.raises(ValueError):
        mbr_select([])


def test_agreement_is_the_rouge2_of_the_metrics_and_symmetric():
    a, b = "The cats were sitting on the mat.", "A cat sat on the mat today."
    assert rouge2_agreement(a, b) == pytest.approx(rouge2_agreement(b, a))
    assert 100 * rouge2_agreement(a, b) == pytest.approx(M.rouge_per_example(a, b)["rouge2"])
    assert M.mbr_select is mbr_select  # scoring code keeps its import


def test_inference_does_not_import_evaluation_and_training_starts_without_nltk():
    """One subprocess, two rules: importing the pipeline loads no ``sld.eval`` module, and importing
    the three trainers (which import the ROUGE helpers) loads neither rouge-score nor nltk until a
    ROUGE is computed (nltk's import is about 2 s of every training process's start on 2 cores)."""
    code = (
        "import sys, sld.pipeline; print(sorted(m for m in sys.modules if m.startswith('sld.eval'))); "
        "import sld.autoencoder_trainer, sld.baseline_trainer, sld.diffusion.trainer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nltk', 'rouge_score'))); "
        "from sld.eval.metrics import rouge_scores; rouge_scores(['a cat sat'], ['a cat sat']); "
        "print('nltk' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]", "True"]
