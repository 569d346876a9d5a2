"""The ``compute`` section: where and how the teacher runs (a Dask cluster), and its TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline._gpu import resolve_precision
from pipeline.config.validation import FieldProblems, Section, abspath, check_address, check_files, word_or_count

SCHEDULER_ENV = "MKD_SCHEDULER"


class SecurityConfig(Section):
    """TLS between this client and a shared Dask cluster (``distributed.security.Security``).

    One certificate serves every role here: the client's, and the scheduler's and workers' of an
    embedded cluster (which then listens on ``tls://``). A remote cluster has its own certificates,
    signed by a CA in ``tls_ca_file``.
    """

    tls_ca_file: Path = Field(description="CA certificate(s) (PEM) the scheduler and workers are signed by.")
    tls_client_cert: Path = Field(description="This client's certificate (PEM; may hold the key too).")
    tls_client_key: Path | None = Field(None, description="Its private key (PEM), unless tls_client_cert holds it.")
    require_encryption: bool = Field(True, description="Refuse unencrypted (tcp://) connections.")

    @field_validator("tls_ca_file", "tls_client_cert", "tls_client_key")
    @classmethod
    def _pem(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        v = abspath(v)
        if check_files(info) and not v.is_file():
            raise ValueError(f"file {v} does not exist")
        return v

    def security(self) -> Any:
        """The ``distributed.security.Security`` of these settings."""
        from distributed.security import Security  # lazy: `config check` needs no distributed import

        cert, key = str(self.tls_client_cert), None if self.tls_client_key is None else str(self.tls_client_key)
        return Security(tls_ca_file=str(self.tls_ca_file), tls_client_cert=cert, tls_client_key=key,
                        tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key,
                        require_encryption=self.require_encryption)


class ComputeConfig(Section):
    """Where and how the teacher runs (a Dask cluster)."""

    scheduler: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786); null: $MKD_SCHEDULER, $DASK_SCHEDULER_ADDRESS, else a LocalCluster."
    )
    workers: Union[int, Literal["auto"]] = Field("auto", description="LocalCluster workers; 'auto': one per GPU, or per core.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per LocalCluster worker.")
    train_threads: int | None = Field(
        None, ge=1, description="torch threads of the training process (teacher and student); null: $OMP_NUM_THREADS "
                                "if set, else every core the process may use.",
    )
    nproc: int = Field(
        1, ge=1, description="Processes per student train stage and teacher fine-tune: > 1 runs each under torchrun (DDP: gloo on CPU, nccl "
                             "with one GPU per process); the batch sequence and the result do not depend on it.",
    )
    batch_size: int = Field(256, ge=1, description="Teacher / saliency forward batch size.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Teacher and saliency forward precision (bf16: autocast, with q.k and the teacher head in "
                            "fp32); auto: bf16 when compute.device is (or, for auto, this machine has) cuda, else fp32. "
                            "Part of the label fingerprint.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device of the workers' models.")
    timeout_s: float | None = Field(3600, gt=0, description="Per-task time limit in seconds; null: none.")
    retries: int = Field(2, ge=0, description="Retries of a failed task.")
    lost_timeout_s: float = Field(
        60, gt=0, description="Seconds the cluster may be without any worker, or the client without its scheduler, "
                              "before the stage fails (exit 5) instead of waiting for ever.",
    )
    security: SecurityConfig | None = Field(
        None, description="TLS to the Dask cluster (CA, client certificate and key); null: plain tcp://. "
                          "Stage configs are code: see the README's Trust section.",
    )
    feed_workers: int | None = Field(
        None, ge=1, description="Decode/render threads of each precompute task (they work while the task's own thread "
                                "drives the device); null: the threads its worker was given (threads_per_worker).",
    )
    decode: Literal["pil", "cuda"] = Field(
        "pil", description="JPEG decoder of precompute tasks: pil (libjpeg, on the CPU), or cuda (nvJPEG on the "
                           "task's GPU; other pixels than pil, so part of the view fingerprint; needs CUDA workers).",
    )

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v)

    @model_validator(mode="after")
    def _decode(self) -> "ComputeConfig":
        if self.decode == "cuda" and self.device == "cpu":
            raise FieldProblems(("decode", "is cuda (nvJPEG on the GPU) but device is cpu; use decode: pil"))
        return self

    def task_precision(self) -> str:
        """The precision precompute tasks run at, ``auto`` resolved (:func:`pipeline._gpu.resolve_precision`)."""
        return resolve_precision(self.precision, self.device)

    @field_validator("workers", mode="plain")
    @classmethod
    def _workers(cls, v: Any) -> int | str:
        if word_or_count(v, "auto"):
            return v
        raise ValueError(f"must be an integer >= 1 or 'auto', got {v!r}")
