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


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """One local Ray head for the whole session, shared by in-process tests and subprocess drivers
    (which join it through RAY_ADDRESS). Started with auth disabled so CLI clients can join."""
    ray_bin = Path(sys.executable).with_name("ray")
    temp = tmp_path_factory.mktemp("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    # Ray's socket paths must stay short: use a short temp dir
    short = Path("/tmp") / f"rt{os.getpid()}"
    proc = subprocess.run([str(ray_bin), "start", "--head", "--num-cpus", "2", "--num-gpus", "0",
                           "--include-dashboard", "false", "--port", "0", "--temp-dir", str(short),
                           "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        pytest.fail(f"ray start failed: {proc.stdout}\n{proc.stderr}")
    import ray

    ray.init(address="auto", ignore_reinit_error=True, _temp_dir=str(short), logging_level="WARNING")
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    del temp
    yield address
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight checkpoints of every model kind, built once per session (``supirkit tiny-models``)."""
    from supirkit.tiny import build_all

    out = tmp_path_factory.mktemp("tiny")
    return build_all(out)
