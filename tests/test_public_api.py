"""The top-level ``sld`` names load their modules on first use, so ``import sld`` stays light."""

import subprocess
import sys

import pytest

import sld


def test_public_names_are_the_library_objects():
    from sld.loading import load_model
    from sld.models.autoencoder import SegmentAutoencoder
    from sld.pipeline import SLDPipeline

    assert sld.SLDPipeline is SLDPipeline and sld.load_model is load_model
    assert sld.SegmentAutoencoder is SegmentAutoencoder
    assert set(sld.__all__) <= set(dir(sld))
    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        sld.Pipeline  # noqa: B018


def test_import_sld_does_not_load_torch():
    code = "import sys, sld, sld.cli; print('torch' in sys.modules, 'sld.pipeline' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
