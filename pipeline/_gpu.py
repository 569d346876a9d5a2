"""Which GPU each process uses, whether a cluster's placement is sound, TF32 and the default precision.

Shared by precompute (Dask workers) and training (torchrun ranks); docs/design.md §6 and
docs/architecture.md ("GPU placement and precision"). torch is imported lazily: Dask workers
import this module before their setup plugin has set the thread environment torch reads.

Placement rules:

* The parent's ``CUDA_VISIBLE_DEVICES`` is respected: local worker / rank ``i`` uses the ``i``-th
  device it lists (``CUDA_VISIBLE_DEVICES=4,5``: physical GPUs 4 and 5), all devices in order when
  it is unset.
* One task at a time per GPU: a worker process drives one device, so a worker that could run two
  GPU tasks at once (``--resources GPU=8`` with several threads) is refused, and so are two workers
  that landed on the same physical GPU (plain ``dask worker --nworkers 8 --resources GPU=1``: every
  process sees all GPUs and takes the first).
* ``compute.device: cuda`` means CUDA: a worker that would run the tasks on the CPU fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pipeline.devices import resolve_device
from pipeline.errors import ComputeError, ConfigError

ENV = "CUDA_VISIBLE_DEVICES"


def visible_ids(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The device ids ``CUDA_VISIBLE_DEVICES`` lists, in order; ``None`` when it is unset (all devices)."""
    value = (os.environ if env is None else env).get(ENV)
    if value is None:
        return None
    # CUDA stops at the first invalid entry; "-1" or "" hide every device
    return [part.strip() for part in value.split(",") if part.strip()]


def visible_note(env: Mapping[str, str] | None = None) -> str:
    """`` (CUDA_VISIBLE_DEVICES=4,5)`` for messages about visible devices; empty when it is unset."""
    ids = visible_ids(env)
    return "" if ids is None else f" ({ENV}={','.join(ids)})"


def local_device_ids(n: int, env: Mapping[str, str] | None = None) -> list[str]:
    """The physical ids of ``n`` local GPU workers/ranks: the first ``n`` of the parent's
    ``CUDA_VISIBLE_DEVICES`` (``"0".."n-1"`` when unset).

    Raises:
        ConfigError: the parent lists fewer than ``n`` devices.
    """
    ids = visible_ids(env)
    if ids is None:
        return [str(i) for i in range(n)]
    if len(ids) < n:
        raise ConfigError(f"{n} GPU workers asked for but {ENV}={','.join(ids) or '(empty)'} lists {len(ids)} device(s)")
    return ids[:n]


def physical_id(index: int, env: Mapping[str, str] | None = None) -> str:
    """The id of CUDA device ``index`` of this process as ``CUDA_VISIBLE_DEVICES`` names it."""
    ids = visible_ids(env)
    if ids is None:
        return str(index)
    if not 0 <= index < len(ids):
        raise ConfigError(f"cuda:{index} is not visible: {ENV}={','.join(ids) or '(empty)'}")
    return ids[index]


def local_rank_device(local_rank: int, count: int) -> int:
    """The CUDA index of torchrun's local rank ``local_rank`` (the ``local_rank``-th visible device).

    Raises:
        ConfigError: fewer visible devices than local ranks (two ranks would share a GPU).
    """
    if local_rank >= count:
        raise ConfigError(f"local rank {local_rank} has no GPU of its own: {count} CUDA device(s) visible"
                          f"{visible_note()}; use compute.nproc <= {count}")
    return local_rank


def device_uuid(index: int) -> str | None:
    """The UUID of CUDA device ``index`` (unique across machines), or None where torch does not say."""
    import torch

    try:
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    except Exception:  # noqa: BLE001 - no driver, or a torch without the field: the id still identifies it
        return None
    return None if uuid is None else str(uuid)


def enable_tf32() -> None:
    """Let float32 matmuls and convolutions on CUDA use TF32 tensor cores (Ampere and later).

    Inputs are rounded to 10 mantissa bits inside the product (accumulation stays float32): the
    float32 parts of a bf16 run (saliency ``q . k``, the teacher's head) and ``precision: fp32``
    runs get tensor-core speed; results differ from strict float32 by ~1e-3 relative.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def default_precision(device: str) -> str:
    """``compute.precision: auto``: bf16 on CUDA, fp32 on the CPU (where bf16 autocast is slower)."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


def uses_tf32(precision: str, device: str) -> bool:
    """Whether float32 matmuls of a task at ``precision`` on ``device`` run in TF32 (:func:`enable_tf32`:
    CUDA workers turn it on), so that its labels' fingerprint says so (``device`` ``auto`` resolved
    as :func:`resolve_precision` does)."""
    if precision != "fp32":
        return False
    return resolve_device(str(device)).startswith("cuda")


def resolve_precision(setting: str, device: str) -> str:
    """The precision tasks run at (and that goes into the label fingerprint): ``setting`` unless it is ``auto``.

    ``device`` is the planning process's device (``cpu``/``cuda``, ``auto`` resolved by whether
    this process sees CUDA), so the fingerprint is fixed before any worker runs.
    """
    if setting != "auto":
        return setting
    return default_precision(resolve_device(device))


def check_overlap(lag: int, *, embedded: bool, precompute_gpu: bool, train_gpu: bool) -> None:
    """Refuse a run whose precompute would share this machine's GPUs with the trainer.

    ``schedule.lag: 1`` computes segment i+1's labels while segment i trains. An embedded Dask
    cluster's GPU workers take the visible GPUs from the first, and so do the trainer's ranks:
    teacher and student would run on the same devices at once (memory, and every number measured
    there, shared).

    Raises:
        ConfigError: lag >= 1, an embedded cluster and both sides on CUDA.
    """
    if lag >= 1 and embedded and precompute_gpu and train_gpu:
        raise ConfigError(f"schedule.lag: {lag} precomputes the next segment while this one trains, but the embedded "
                          f"Dask cluster's GPU workers and the trainer's ranks would share the same GPUs{visible_note()}: "
                          "use schedule.lag: 0, or a scheduler (compute.scheduler / --scheduler) whose GPU workers "
                          f"have GPUs of their own (their own {ENV})")


def placement_problems(reports: Mapping[str, Mapping[str, Any]], device: str,
                       resources: Mapping[str, float] | None) -> tuple[list[str], list[str]]:
    """What is wrong with where the workers run their tasks: ``(config problems, compute problems)``.

    ``reports``: ``{address: placement_report()}`` of every worker (see
    :func:`pipeline.precompute.worker.placement_report`); ``device``: ``compute.device``;
    ``resources``: what each task asks for (workers that cannot run one are not looked at).
    Config problems are setups that would put two tasks on one GPU; compute problems are
    workers that would run a ``cuda`` run's tasks on the CPU.
    """
    need = dict(resources or {})
    runs = {a: r for a, r in reports.items()
            if all(float((r.get("resources") or {}).get(k, 0)) >= v for k, v in need.items())}
    config: list[str] = []
    compute: list[str] = []
    by_gpu: dict[str, list[str]] = {}
    for addr, r in sorted(runs.items()):
        who = _who(addr, r)
        dev = str(r.get("device") or "cpu")
        if dev == "cpu":
            if device == "cuda":
                compute.append(f"{who} runs tasks on the CPU but compute.device is cuda: {_why_cpu(r)}")
            continue
        slots = min(int(float((r.get("resources") or {}).get("GPU", 1))), int(r.get("nthreads") or 1))
        if slots > 1:
            config.append(f"{who} offers GPU={_num(r['resources']['GPU'])} with {r.get('nthreads')} threads: up to "
                          f"{slots} tasks would share its one device ({dev}); start one worker process per GPU "
                          f"(`dask cuda worker`, or `dask worker --resources GPU=1` with its own {ENV})")
        key = r.get("gpu_uuid") or f"{r.get('host')}/{r.get('gpu')}"
        by_gpu.setdefault(key, []).append(who)
    for key, whos in sorted(by_gpu.items()):
        if len(whos) > 1:
            config.append(f"{len(whos)} workers share one GPU ({key}): {', '.join(whos)}; each worker process needs a GPU "
                          f"of its own: start them with `dask cuda worker` (one process per GPU) or give each its own "
                          f"{ENV} (plain `dask worker --nworkers N` processes all take the first GPU they see)")
    return config, compute


def check_placement(reports: Mapping[str, Mapping[str, Any]], device: str,
                    resources: Mapping[str, float] | None) -> None:
    """Raise for the first kind of :func:`placement_problems` found (all of that kind in one message).

    Raises:
        ConfigError: two tasks could share a GPU (exit 2).
        ComputeError: ``compute.device`` is cuda but a worker would run tasks on the CPU (exit 5).
    """
    config, compute = placement_problems(reports, device, resources)
    if config:
        raise ConfigError("GPU placement refused: " + "; ".join(config))
    if compute:
        raise ComputeError("; ".join(compute))


def _who(addr: str, r: Mapping[str, Any]) -> str:
    name = r.get("name")
    host = r.get("host")
    label = f"worker {name} ({addr})" if name not in (None, addr) else f"worker {addr}"
    return f"{label} on {host}" if host else label


def _why_cpu(r: Mapping[str, Any]) -> str:
    res = dict(r.get("resources") or {})
    if res.get("GPU", 0) < 1:
        hint = "it offers no GPU resource: start GPU workers with --resources GPU=1"
        if r.get("cuda_devices"):
            hint += f" (torch sees {r['cuda_devices']} CUDA device(s) there)"
        return hint
    visible = r.get("visible")
    return f"it offers {res} but torch sees no CUDA device there ({ENV}={visible!r})"


def _num(v: Any) -> str:
    return f"{float(v):g}"
