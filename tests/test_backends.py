"""sld.backends: the process-wide settings read from the environment."""

import pytest
import torch

from sld.backends import (
    CUDNN_ATTENTION_ENV,
    MEMORY_FRACTION_ENV,
    configure_attention,
    configure_memory_share,
    guarded_step,
    memory_fraction_from_env,
    sync_debug_mode,
)
from sld.errors import UserError


def test_cudnn_attention_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(CUDNN_ATTENTION_ENV, raising=False)
    assert configure_attention() is False
    monkeypatch.setenv(CUDNN_ATTENTION_ENV, "1")
    assert configure_attention() is True
    configure_attention(False)


def test_cudnn_attention_first_leads_the_priority_order_and_bad_values_name_the_variable(monkeypatch):
    from torch.nn.attention import SDPBackend

    before = list(torch._C._get_sdp_priority_order())
    monkeypatch.setenv(CUDNN_ATTENTION_ENV, "first")
    try:
        assert configure_attention() is True
        order = list(torch._C._get_sdp_priority_order())
        assert order[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert sorted(order) == sorted(before)
    finally:
        torch._C._set_sdp_priority_order(before)
        configure_attention(False)
    monkeypatch.setenv(CUDNN_ATTENTION_ENV, "yes")
    with pytest.raises(UserError, match=CUDNN_ATTENTION_ENV):
        configure_attention()


def test_memory_share_is_read_and_checked(monkeypatch):
    monkeypatch.delenv(MEMORY_FRACTION_ENV, raising=False)
    assert memory_fraction_from_env() is None
    monkeypatch.setenv(MEMORY_FRACTION_ENV, "0.25")
    assert memory_fraction_from_env() == 0.25
    for bad in ("0", "1.5", "-0.1", "half", "nan"):
        monkeypatch.setenv(MEMORY_FRACTION_ENV, bad)
        with pytest.raises(UserError, match=MEMORY_FRACTION_ENV):
            memory_fraction_from_env()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_memory_share_is_a_no_op_without_cuda(monkeypatch):
    monkeypatch.setenv(MEMORY_FRACTION_ENV, "0.5")
    assert configure_memory_share() is None


def test_a_bad_share_is_a_one_line_stage_error(monkeypatch, capsys, tmp_path):
    from sld.cli import main

    monkeypatch.setenv(MEMORY_FRACTION_ENV, "2")
    code = main(
        [
            "synthetic",
            f"output_dir={tmp_path}",
            "stories_train=2",
            "stories_valid=2",
            "dialogues_train=2",
            "dialogues_valid=2",
        ]
    )
    assert code == 2
    assert MEMORY_FRACTION_ENV in capsys.readouterr().err


def test_sync_debug_mode_is_read_and_checked(monkeypatch):
    monkeypatch.delenv("SLD_SYNC_DEBUG", raising=False)
    assert sync_debug_mode() is None
    for raw, expected in (("0", None), ("warn", "warn"), (" ERROR ", "error")):
        monkeypatch.setenv("SLD_SYNC_DEBUG", raw)
        assert sync_debug_mode() == expected
    monkeypatch.setenv("SLD_SYNC_DEBUG", "1")
    with pytest.raises(UserError, match="SLD_SYNC_DEBUG='1': expected warn, error or 0"):
        sync_debug_mode()


def test_guarded_step_sets_and_restores_the_cuda_sync_mode(monkeypatch):
    """On a CUDA device the mode holds inside the step only; elsewhere nothing is touched."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", calls.append)
    with guarded_step("error", "cuda"):
        assert calls == ["error"]
    assert calls == ["error", 0]
    with guarded_step("warn", "cpu"), guarded_step(None, "cuda"):
        pass
    assert calls == ["error", 0]
