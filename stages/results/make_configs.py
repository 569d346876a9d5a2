"""Writes the row configs of RESULTS.md (results v2, issue 13). The YAML files are the committed
truth; this script only keeps them consistent. Run: python stages/results/make_configs.py"""
from pathlib import Path

TEACHERS = {  # committed weights (stages/results/teachers/*.json: config, recipe, sha256)
    "plain": "stages/results/teachers/results-v2-teacher.safetensors",
    "robust": "stages/results/teachers/results-v2-teacher-robust.safetensors",
    "ft1": "stages/results/teachers/results-v3-teacher-ft1.safetensors",
    "ft2": "stages/results/teachers/results-v3-teacher-ft2.safetensors",
}
TEACHER_TEXT = {
    "plain": "the plain teacher (trained on whole token sequences; test top-1 0.8873)",
    "robust": "the mask-robust teacher (timm patch_drop_rate 0.5 while training; test top-1 0.8882)",
    "ft1": "the plain teacher fine-tuned 1 epoch with patch_drop_rate 0.5 (stages/results/teacher-v3-ft1.yaml; test top-1 0.8707)",
    "ft2": "the plain teacher fine-tuned 2 epochs with patch_drop_rate 0.5 (stages/results/teacher-v3-ft2.yaml; test top-1 0.8701)",
}
LR = "8.0e-3"  # from the CE-only sweep (rows sweep-lr*-s0 and ce-s0); see RESULTS.md

BASE = """# Row: {row}
#
# Run:      mkd-pipeline run stages/results/{name}.yaml
#           (the teachers are committed weights: stages/results/teachers/, nothing to train first)
# Hardware: CPU (2 cores); about 4-6 minutes per run with OMP_NUM_THREADS=1, two runs at a time
#           (stages/results/run_all.sh runs every row).
# Prints:   per-milestone student test top-1 (all 10,000 test images){prints};
#           runs/results-{name}/report.md.
# Table:    mkd-pipeline report --spec stages/results/results.toml --results stages/results/*.yaml --out RESULTS.md
#
# Sizes (identical in every row): student ViT dim 48 / depth 3 / 3 heads, 4x4 patches on 28x28 (49
# patches), trained 8 epochs on the first 20,000 training images (milestones at epochs 0, 1, 2, 4,
# 6), batch 128; teacher ViT dim 96 / depth 4 trained on all 60,000 training images: {teacher_text}.

name: results-{name}

data:
  root: data/fashion-mnist
  train: train
  val: test
  num_classes: 10
  mean: [0.2860]
  std: [0.3530]
  interpolation: bilinear
  subset: 20000

teacher:
  model: vit_tiny_patch16_224
  kwargs: {{img_size: 28, patch_size: 4, in_chans: 1, num_classes: 10, embed_dim: 96, depth: 4, num_heads: 3}}
  weights: {teacher}

student:
  model: vit_tiny_patch16_224
  kwargs: {{img_size: 28, patch_size: 4, in_chans: 1, num_classes: 10, embed_dim: 48, depth: 3, num_heads: 3}}
  init_seed: {seed}

schedule:
  epochs: 8
  milestones: [0, 1, 2, 4, 6]
  lag: 0

masking:
  policy: {policy}
  keep: {keep}{budget}
  tolerance: 0
  spot_check: 64

views:
  seed: {seed}
  pool: epochs
  scale: [0.6, 1.0]
  ratio: [0.75, 1.3333333]
  hflip: 0.5

labels:
  store: store
  topk: 10
  dtype: float16
  temperatures: [1.0]

compute:
  scheduler: null
  workers: 2
  threads_per_worker: 1
  batch_size: 256
  precision: fp32
  device: cpu
  timeout_s: 1800
  retries: 1

train:
  optimizer: adamw
  lr: {lr}
  weight_decay: 0.05
  sched: cosine
  warmup_epochs: 1
  min_lr: 1.0e-5
  batch_size: 128
  lam: 1.0
  ce_weight: 1.0
  tau: 1.0
  kd: {kd}
  smoothing: 0.0
  seed: {seed}
  num_workers: 0
  eval_every: 2

online: false
"""

ROWS = []


def row(name, row, *, teacher="plain", policy="student", keep="25", budget=None, kd="kl", lr=LR, seeds=(0,)):
    for s in seeds:
        n = f"{name}-s{s}"
        prints = "" if kd == "off" else ", teacher top-1 on its masked views per milestone"
        if budget:
            prints += ", the keep chosen per milestone and its spot-check curve"
        b = f"\n  budget: {budget}" if budget else ""
        ROWS.append((n, BASE.format(row=row, name=n, prints=prints, teacher=TEACHERS[teacher],
                                    teacher_text=TEACHER_TEXT[teacher], seed=s, policy=policy, keep=keep,
                                    budget=b, lr=lr, kd=kd)))


S3 = (0, 1, 2)
row("ce", "CE only", policy="none", keep="null", kd="off", seeds=S3)
for lr in ("1.0e-3", "2.0e-3", "4.0e-3", "8.0e-3", "1.6e-2"):
    if lr != LR:  # the CE row's seed 0 is the sweep's point at LR
        row(f"sweep-lr{lr}", f"CE-only lr sweep: lr {lr}", policy="none", keep="null", kd="off", lr=lr)
for t in ("plain", "robust"):
    row(f"{t}-full", f"{t} teacher: offline full-teacher KD", teacher=t, policy="none", keep="null", seeds=S3)
    row(f"{t}-mkd50", f"{t} teacher: offline MaskedKD 50%", teacher=t, seeds=S3)
    row(f"{t}-random50", f"{t} teacher: offline random 50%", teacher=t, policy="random")
    row(f"{t}-auto95", f"{t} teacher: offline auto keep, agreement 0.95", teacher=t, keep="auto",
        budget="{agreement: 0.95}", seeds=S3)
    row(f"{t}-auto90", f"{t} teacher: offline auto keep, agreement 0.90", teacher=t, keep="auto",
        budget="{agreement: 0.90}")
for t in ("ft1", "ft2"):  # issue 24: the plain teacher made mask-robust by a short fine-tune
    row(f"{t}-mkd50", f"{t} teacher: offline MaskedKD 50%", teacher=t, seeds=S3)
    # random 50% with the 1-epoch fine-tune landed on full-teacher KD at seed 0: three seeds for it
    row(f"{t}-random50", f"{t} teacher: offline random 50%", teacher=t, policy="random", seeds=S3 if t == "ft1" else (0,))

if __name__ == "__main__":
    here = Path(__file__).parent
    for n, text in ROWS:
        (here / f"{n}.yaml").write_text(text)
    print(len(ROWS), "configs")
