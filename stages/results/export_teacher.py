"""Export a results teacher trained by `mkd-pipeline run TEACHER.yaml --until teacher` (or fine-tuned
by `--until teacher-finetune`: a config with `teacher.weights` and a `train` block) as a committed
weights file: stages/results/teachers/<name>.safetensors with <name>.json beside it (the timm model
and kwargs, the training recipe, test top-1, the file's sha256; for a fine-tune also what it started
from and what it cost: its MACs, forward + backward as the stage recorded them, and wall seconds),
so result rows load it with `teacher.weights` and no later session trains it again.

Run: python stages/results/export_teacher.py stages/results/teacher-v2.yaml
     python stages/results/export_teacher.py stages/results/teacher-v3-ft1.yaml
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from pipeline._lock import LOCK_NAME, RunLock
from pipeline.config import load_config
from pipeline.models import create_model, model_fingerprint, read_state_dict

OUT = Path(__file__).resolve().parent / "teachers"


def _repo_relative(path: Path) -> str:
    """The path from the repository root when it lies inside (the loader makes it absolute; the .json is committed)."""
    root, full = Path(__file__).resolve().parents[2], path.resolve()
    return full.relative_to(root).as_posix() if full.is_relative_to(root) else path.as_posix()


def finetune_record(teacher, info: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tune started from and cost, from its ``teacher-finetune`` stage's lock info."""
    start = "pretrained" if teacher.pretrained else _repo_relative(Path(str(teacher.weights)))
    return {"from": start, "start_top1": info.get("start_top1"), "epochs": len(info.get("epochs") or []),
            "macs": info.get("macs"), "image_steps": info.get("image_steps"), "seconds": info.get("seconds"),
            "nproc": info.get("nproc")}


def export(stages: str) -> Path:
    """Write the teacher of ``stages`` (already trained) to ``teachers/<name>.safetensors`` + ``.json``."""
    cfg = load_config(stages)
    assert cfg.run_dir is not None  # the loader fills it
    lock = RunLock(Path(cfg.run_dir) / LOCK_NAME)
    t = cfg.teacher
    stage = "teacher-finetune" if t.fine_tuned else "teacher"  # a fine-tune's weights are its own stage's output
    rec = lock.output(stage, "weights")
    if rec is None:
        sys.exit(f"{stages}: no trained teacher in {lock.path}; run `mkd-pipeline run {stages} --until {stage}` first")
    sd = {k: v.contiguous() for k, v in read_state_dict(rec["path"]).items()}
    model = create_model(t.model, t.kwargs)
    model.load_state_dict(sd, strict=True)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{cfg.name}.safetensors"
    save_file(sd, str(path))
    path.chmod(0o644)  # safetensors writes 0600; the file is meant to be committed and shared
    info = lock.info(stage)
    assert t.train is not None  # a trained teacher has its recipe
    doc: dict[str, Any] = {
        "model": t.model, "kwargs": t.kwargs, "config": str(Path(stages)), "recipe": t.train.model_dump(mode="json"),
        "epochs": len(info.get("epochs") or []), "test_top1": info.get("top1"), "seconds": info.get("seconds"),
        "fingerprint": model_fingerprint(model, t.model),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size,
    }
    if t.fine_tuned:
        doc["finetune"] = finetune_record(t, info)
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    cost = f", fine-tune {doc['finetune']['macs'] / 1e9:.1f} GMACs" if t.fine_tuned and doc["finetune"]["macs"] else ""
    print(f"{path} ({doc['bytes']} bytes, test top-1 {doc['test_top1']}{cost}, sha256 {doc['sha256'][:12]}...)")
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        export(arg)
