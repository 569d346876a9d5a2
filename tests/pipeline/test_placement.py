"""pipeline.placement: models audited where they run, one transfer back, meta as a second device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline import placement
from pipeline.errors import ComputeError


def test_place_model_moves_and_audits():
    model = nn.Linear(3, 2)
    assert placement.place_model(model, "meta") is model
    assert all(p.device.type == "meta" for p in model.parameters())
    placement.check_placed(model, "meta")


def test_check_placed_names_the_tensor_left_behind():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].to("meta")
    with pytest.raises(ComputeError, match=r"1\.weight|1\.bias|1\.running_mean"):
        placement.check_placed(model, "meta", "the teacher")
    with pytest.raises(ComputeError, match="the teacher is not on cpu: 0.weight is on meta"):
        placement.check_placed(model, "cpu", "the teacher")


def test_to_host_returns_cpu_tensors_as_they_are_and_meta_as_zeros():
    a = torch.arange(4)
    out = placement.to_host(a, torch.empty(2, 3, device="meta", dtype=torch.float16))
    assert out[0] is a
    assert out[1].dtype == torch.float16 and out[1].shape == (2, 3) and not out[1].any()


def test_one_copy_packs_tensors_of_any_dtype_and_unpacks_them_exactly():
    # the packing path of device tensors, run on CPU tensors: odd sizes keep later tensors aligned
    tensors = [torch.tensor([True, False, True]), torch.randn(3, 5, dtype=torch.float64),
               torch.arange(7, dtype=torch.int16), torch.randn(2, 3).to(torch.bfloat16), torch.arange(6).reshape(2, 3)]
    out: list = [None] * len(tensors)
    placement._copy_back(tensors, list(range(len(tensors))), out)
    for t, o in zip(tensors, out):
        assert o.dtype == t.dtype and o.shape == t.shape and torch.equal(o, t)


def test_to_device_is_a_no_op_on_the_same_device_and_use_device_ignores_the_cpu():
    t = torch.ones(2)
    assert placement.to_device(t, "cpu") is t
    assert placement.to_device(t, "meta").device.type == "meta"
    placement.use_device("cpu")
    assert placement.pin(t, "cpu") is t


def test_sync_debug_is_off_on_the_cpu(monkeypatch):
    monkeypatch.setenv(placement.SYNC_DEBUG_ENV, "error")
    with placement.sync_debug("cpu"):
        assert float(torch.ones(1).sum()) == 1.0


def test_sync_debug_turns_cudas_sync_debug_mode_on_from_the_environment_and_back(monkeypatch):
    modes = [0]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with placement.sync_debug("cuda:0"):
        assert modes == [0]  # unset: off
    monkeypatch.setenv(placement.SYNC_DEBUG_ENV, "warn")
    with placement.sync_debug("cuda:0"):
        assert modes[-1] == "warn"
    assert modes[-1] == 0

