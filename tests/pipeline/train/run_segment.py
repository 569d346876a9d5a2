"""Run one training segment from a JSON job file (for the subprocess and torchrun tests).

Usage: python run_segment.py JOB.json   (or under torchrun). Prints the result as JSON (rank 0).
Env SLOW_STEP=<seconds> sleeps before every batch, so a test can kill the run mid-epoch.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from maskedkd.views import ViewSpec
from pipeline.config import TrainConfig
from pipeline.labels.contract import LabelRef, RenderSpec, ShardRef
from pipeline.models import create_model
from pipeline.train import train_segment
from pipeline.train.labeled_views import LabeledViews
from tests.pipeline.train.helpers import VIT


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(1)
    if os.environ.get("SLOW_STEP"):
        render, pause = LabeledViews.render, float(os.environ["SLOW_STEP"])

        def slow(self, segments, *args, **kwargs):
            time.sleep(pause)
            return render(self, segments, *args, **kwargs)

        LabeledViews.render = slow  # the trainer renders every batch through its dataset
    shards = [ShardRef(n, Path(p), r) for n, p, r in job["shards"]]
    labels = {(n, ve): LabelRef(p) for n, ve, p in job["labels"]} if job.get("labels") else None
    model = create_model(VIT, job["model"], seed=job["model_seed"])
    result = train_segment(
        model, shards=shards, spec=ViewSpec.from_dict(job["spec"]), seed=job["seed"], epochs=range(*job["epochs"]),
        cfg=TrainConfig.model_validate(job["cfg"]), total_epochs=job["total_epochs"], render=RenderSpec(**job["render"]),
        run_dir=job["run_dir"], labels=labels,
        view_pool=job.get("view_pool"),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
