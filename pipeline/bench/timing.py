"""Timing helpers shared by the benchmarks: warm-up, repeats, median."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def interleaved_medians(fns: dict, *, warmup: int = 1, repeats: int = 5) -> dict:
    """Median seconds per named callable, timed round-robin so that load spikes on a shared
    machine hit every candidate alike rather than whichever ran during the spike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine_line() -> str:
    """One line naming this machine: CPU model, core count, torch threads, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load {os.getloadavg()[0]:.2f}"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}{load}"
