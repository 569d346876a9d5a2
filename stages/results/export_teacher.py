"""Export a results teacher trained by `mkd-pipeline run TEACHER.yaml --until teacher` as a committed
weights file: stages/results/teachers/<name>.safetensors with <name>.json beside it (the timm model
and kwargs, the training recipe, test top-1, the file's sha256), so result rows load it with
`teacher.weights` and no later session trains it again.

Run: python stages/results/export_teacher.py stages/results/teacher-v2.yaml
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from pipeline._lock import LOCK_NAME, RunLock
from pipeline.config import load_config
from pipeline.models import create_model, model_fingerprint, read_state_dict

OUT = Path(__file__).resolve().parent / "teachers"


def export(stages: str) -> Path:
    """Write the teacher of ``stages`` (already trained) to ``teachers/<name>.safetensors`` + ``.json``."""
    cfg = load_config(stages)
    lock = RunLock(Path(cfg.run_dir) / LOCK_NAME)
    stage = "teacher-finetune" if lock.output("teacher-finetune", "weights") else "teacher"
    rec = lock.output(stage, "weights")
    if rec is None:
        sys.exit(f"{stages}: no trained teacher in {lock.path}; run `mkd-pipeline run {stages} --until teacher` first")
    t = cfg.teacher
    sd = {k: v.contiguous() for k, v in read_state_dict(rec["path"]).items()}
    model = create_model(t.model, t.kwargs)
    model.load_state_dict(sd, strict=True)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{cfg.name}.safetensors"
    save_file(sd, str(path))
    path.chmod(0o644)  # safetensors writes 0600; the file is meant to be committed and shared
    info = lock.info(stage)
    doc = {
        "model": t.model, "kwargs": t.kwargs, "config": str(Path(stages)), "recipe": t.train.model_dump(mode="json"),
        "epochs": len(info.get("epochs") or []), "test_top1": info.get("top1"), "seconds": info.get("seconds"),
        "fingerprint": model_fingerprint(model, t.model),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size,
    }
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{path} ({doc['bytes']} bytes, test top-1 {doc['test_top1']}, sha256 {doc['sha256'][:12]}...)")
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        export(arg)
