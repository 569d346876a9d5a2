"""``compute.security``: TLS to a shared Dask cluster. A real scheduler and worker process listen
on ``tls://`` with a self-signed localhost certificate (``openssl``); a client without the
settings cannot connect (exit 5), one with them runs a precompute partition over TLS, and an
embedded cluster started with them speaks TLS too."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from distributed import LocalCluster

from pipeline.config.compute import SecurityConfig
from pipeline.errors import ComputeError
from pipeline.labels import open_partition
from pipeline.precompute.cluster import open_cluster
from pipeline.precompute.run import cluster_for
from tests.pipeline.precompute.helpers import run

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> SecurityConfig:
    """A self-signed certificate for localhost / 127.0.0.1, serving as its own CA."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return SecurityConfig(tls_ca_file=d / "cert.pem", tls_client_cert=d / "cert.pem", tls_client_key=d / "key.pem")


@pytest.fixture(scope="module")
def tls_cluster(certs):
    """A shared cluster of one worker process that only speaks TLS."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", protocol="tls://",
                      security=certs.security(), dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                      resources={"CPU": 1}, memory_limit=None, silence_logs=logging.ERROR) as local:
        yield local.scheduler_address


def test_a_tls_cluster_refuses_a_client_without_the_settings(tls_cluster):
    assert tls_cluster.startswith("tls://")
    with pytest.raises(ComputeError, match=f"cannot connect to the Dask scheduler at {tls_cluster}") as e:
        with open_cluster(tls_cluster, connect_timeout=5, announce=None):
            pass
    assert e.value.exit_code == 5


def test_precompute_over_tls_with_compute_security(stage, tasks, certs, tls_cluster):
    cfg = stage()
    cfg.compute.scheduler, cfg.compute.security = tls_cluster, certs
    t = tasks(cfg)[0]
    with cluster_for(cfg) as cluster:
        assert cluster.address.startswith("tls://") and not cluster.embedded
        out = run([t], cluster, cfg, "tls")
    assert out["rows"] > 0 and not out["cached"]
    with open_partition(t.path, expect={"fingerprints": t.fingerprints}) as part:
        assert part.num_rows == out["rows"]


def test_embedded_cluster_speaks_tls_with_compute_security(certs):
    with open_cluster(workers=1, device="cpu", dashboard=False, memory_limit=None, announce=None,
                      security=certs.security()) as cluster:
        assert cluster.address.startswith("tls://")
        assert cluster.client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3


def test_missing_certificate_is_a_config_error_naming_the_field(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tls_client_cert"):
        SecurityConfig.model_validate({"tls_ca_file": __file__, "tls_client_cert": str(tmp_path / "no.pem")},
                                      context={"check_files": True})
    assert SecurityConfig.model_validate({"tls_ca_file": "a.pem", "tls_client_cert": "b.pem"},
                                         context={"check_files": False}).tls_client_cert == Path("b.pem").absolute()
