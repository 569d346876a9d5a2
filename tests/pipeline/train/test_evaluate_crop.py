"""Evaluation renders by the model's own ``crop_pct`` (issue 24 item 2): timm's centre crop."""

import dataclasses

from pipeline.models import create_model
from pipeline.train.evaluate import evaluate
from tests.pipeline.train.conftest import RENDER, TEACHER
from tests.pipeline.train.helpers import VIT


def test_crop_pct_centre_crops_the_evaluation_views(test_shards):
    model = create_model(VIT, TEACHER, seed=0)
    whole = evaluate(model, test_shards, RENDER)
    assert evaluate(model, test_shards, dataclasses.replace(RENDER, crop_pct=1.0)) == whole  # square images: all of it
    cropped = evaluate(model, test_shards, dataclasses.replace(RENDER, crop_pct=0.5))
    assert cropped["samples"] == whole["samples"] and cropped["loss"] != whole["loss"]
