"""One rank of a 2-process gloo group (run by test_dist.py): rank 1 fails, rank 0 waits in a collective."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from pipeline.errors import ConfigError, PipelineError
from pipeline.train import dist as tdist


def main() -> int:
    info, _ = tdist.setup("cpu")
    try:
        with tdist.failing_together():
            dist.barrier()
            if info.rank == 1:
                raise ConfigError("rank one cannot go on", exit_code=9)
            dist.all_reduce(torch.ones(1))  # rank 1 never joins: without fail-fast this waits
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
