"""evaluate places the model on the device it runs on (the first CUDA stage of imagenet.yaml crashed)."""

from __future__ import annotations

import pytest

from pipeline.train import evaluate

from .conftest import RENDER, student

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pipeline/conftest.py


def test_a_model_built_on_the_cpu_is_evaluated_on_another_device(test_shards):
    # meta stands in for cuda: a model left on the CPU fails against meta images as it would on a GPU
    model = student()
    res = evaluate(model, test_shards[:1], RENDER, batch_size=64, device="meta")
    assert res["samples"] > 0
    assert all(p.device.type == "meta" for p in model.parameters())


def test_evaluate_on_the_cpu_is_unchanged_by_placement(test_shards):
    model = student()
    a = evaluate(model, test_shards[:1], RENDER, batch_size=64)
    b = evaluate(model, test_shards[:1], RENDER, batch_size=7)
    assert a["samples"] == b["samples"] and a["top1"] == b["top1"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
