"""Test environment: offline, project-local caches, one shared local Ray instance.

Nothing is ever downloaded: HF_HUB_OFFLINE is set before any library reads it, and the tiny models are
built locally (``tiny_models`` fixture) and loaded through the real ``from_pretrained`` paths.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray head for the whole session, shared by in-process tests and subprocess drivers
    (which join it through RAY_ADDRESS). Started with auth disabled so CLI clients can join.

    The head runs under ``ray start --block`` and is stopped by terminating that process group, so
    teardown stops this session's Ray only (``ray stop`` would stop every Ray on the machine)."""
    import signal
    import time

    ray_bin = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    # Ray's socket paths must stay short: use a short temp dir
    short = Path("/tmp") / f"rt{os.getpid()}"
    port = _free_port()
    log = open(short.with_suffix(".log"), "w")
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
                             "--include-dashboard", "false", "--port", str(port), "--temp-dir", str(short),
                             "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    import ray

    address = f"127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}: {short.with_suffix('.log').read_text()}")
        try:
            ray.init(address=address, ignore_reinit_error=True, logging_level="WARNING")
            break
        except Exception as exc:  # the GCS is not up yet
            if time.time() > deadline:
                head.kill()
                pytest.fail(f"ray head did not come up in 180 s: {exc}")
            time.sleep(1.0)
    address = ray.get_runtime_context().gcs_address
    ray.shutdown()
    os.environ["RAY_ADDRESS"] = address
    yield address
    os.environ.pop("RAY_ADDRESS", None)
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log.close()


@pytest.fixture
def ray_address(ray_head):
    """The session's head for one test; whatever this test connects in-process is disconnected after it.

    This process stays connected only while a test needs it: the cluster drills start and kill nodes of
    another cluster from this process (``ray.cluster_utils``), and a driver connected meanwhile loses its
    GCS connection and ends the whole process a minute later."""
    import ray

    os.environ["RAY_ADDRESS"] = ray_head
    yield ray_head
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight checkpoints of every model kind, built once per session (``supirkit tiny-models``)."""
    from supirkit.tiny import build_all

    out = tmp_path_factory.mktemp("tiny")
    return build_all(out)
