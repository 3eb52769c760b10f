"""Multi-node Ray on one machine, with failures: a head and worker nodes of their own (``ray.cluster_utils
.Cluster``: a raylet and an object store per node, own resources, one session folder), drivers started as
separate processes that join it through ``RAY_ADDRESS`` or ``ray job submit``.

- ``curate`` (Ray tasks) loses a worker node in the middle of its write pass: the lost units are retried on
  the other node, and the output equals a single-node run's (same keys, byte-identical images, nothing
  lost or doubled, no temporary file left);
- ``caption`` (a pool of actors, tiny LLaVA) loses the node of one of its actors in the middle of a shard:
  the actor restarts on the node that replaces it, its shard is redone, the captions equal a single-node
  run's;
- the driver of a ``ray job submit`` job dies (SIGKILL) in the middle of the job; submitting it again
  resumes it (finished units are not redone) and ends with the same output.

The moment of each node loss is not a matter of timing: the node's processes hold the first unit they
start (``SUPIRKIT_FAULT=hold_unit:STAGE``, armed in that node's environment only) and announce it, and the
drill takes the node away then.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from caption_fixtures import make_shards
from datapipe_fixtures import read_set

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[1]
CURATE = ["--config", "curate/demo.yaml", "--set", "runner.progress=log", "--set", "report.enabled=false",
          "--set", "input.inputs_per_partition=4", "--set", "output.samples_per_shard=2"]
#: the node a drill kills is found dead within ~3 s instead of Ray's default ~30 s
FAST_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                          "health_check_initial_delay_ms": 1000}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head (no CPUs of its own, the dashboard for job submission) and worker nodes of 1 CPU each."""

    def __init__(self, temp: Path, held: Path) -> None:
        from ray.cluster_utils import Cluster

        self.held = held
        with _node_env(), _keep_current_cluster_file():
            self.cluster = Cluster(initialize_head=True, connect=False, shutdown_at_exit=True, head_node_args=dict(
                num_cpus=0, num_gpus=0, include_dashboard=True, dashboard_host="127.0.0.1",
                dashboard_port=_free_port(), dashboard_agent_listen_port=_free_port(), temp_dir=str(temp),
                _system_config=FAST_FAILURE_DETECTION))
        self.address = self.cluster.address
        self.dashboard = f"http://{self.cluster.webui_url}"

    def stop(self) -> None:
        """Every node of this cluster, and nothing else (``Cluster.shutdown`` also resets this process's Ray
        client state and the machine's "current cluster" file, which other Ray users on the machine read)."""
        for node in list(self.cluster.worker_nodes):
            self.cluster.remove_node(node, allow_graceful=False)
        if self.cluster.head_node is not None:
            self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)

    def add_worker(self, hold: str | None = None):
        """A worker node; with ``hold``, its processes hold the first unit of that stage they start."""
        extra = {"SUPIRKIT_FAULT": f"hold_unit:{hold}", "SUPIRKIT_FAULT_DIR": str(self.held)} if hold else {}
        with _node_env(extra):
            node = self.cluster.add_node(num_cpus=1, num_gpus=0)
        self.cluster.wait_for_nodes()
        return node

    def wait_for_hold(self, timeout: float = 240.0) -> list[Path]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = sorted(self.held.glob("hold_unit-*"))
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError("no unit was held on the node to kill")

    def kill(self, node) -> None:
        """Take a worker node away at once (raylet, object store and workers SIGKILLed)."""
        self.cluster.remove_node(node, allow_graceful=False)
        for p in self.held.glob("hold_unit-*"):
            p.unlink()

    def env(self) -> dict:
        env = dict(os.environ, RAY_ADDRESS=self.address, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
        for name in ("SUPIRKIT_FAULT", "SUPIRKIT_FAULT_DIR"):
            env.pop(name, None)
        return env


class _keep_current_cluster_file:
    """Starting a head records it as the machine's current cluster (``/tmp/ray/ray_current_cluster``), where
    ``ray.init()`` without an address looks: put back what was there, so no other Ray user joins this one."""

    def __enter__(self):
        from ray._common.utils import get_ray_address_file

        self.path = Path(get_ray_address_file(None))
        self.before = self.path.read_text() if self.path.is_file() else None

    def __exit__(self, *exc):
        if self.before is not None:
            self.path.write_text(self.before)
        else:
            self.path.unlink(missing_ok=True)


class _node_env:
    """The environment the next node's processes (and so its workers) inherit: this test's, without a Ray
    address of another cluster, plus ``extra``."""

    def __init__(self, extra: dict | None = None) -> None:
        self.extra = dict(extra or {})

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "SUPIRKIT_FAULT", "SUPIRKIT_FAULT_DIR")}
        for k in self.saved:
            os.environ.pop(k, None)
        os.environ.update(self.extra)
        os.environ["RAY_AUTH_MODE"] = "disabled"

    def __exit__(self, *exc):
        for k in ("SUPIRKIT_FAULT", "SUPIRKIT_FAULT_DIR"):
            os.environ.pop(k, None)
        for k, v in self.saved.items():
            if v is not None:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    held = tmp_path_factory.mktemp("held")
    temp = Path("/tmp") / f"rc{os.getpid()}"  # Ray's socket paths must stay short
    c = LocalCluster(temp, held)
    c.nodes = [c.add_worker(hold="curate:write"), c.add_worker()]
    yield c
    c.stop()


def _cli(argv: list, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supirkit.cli", *map(str, argv)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def _wait(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    text, _ = proc.communicate(timeout=timeout)
    return proc.returncode, text


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from supirkit.demo.samples import make_sample_folder

    folder = tmp_path_factory.mktemp("photos")
    make_sample_folder(folder, size=320)
    return folder


@pytest.fixture(scope="module")
def curated_on_one_node(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "curated"
    proc = _cli(["curate", photos, "--out", out, *CURATE, "--set", "runner.executor=local"],
                dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    reference = read_set(out)
    assert len(reference) >= 3, "the drill needs several write units"
    return reference


def test_curate_tasks_survive_a_worker_node_lost_mid_job(cluster, photos, curated_on_one_node, tmp_path):
    out = tmp_path / "curated"
    driver = subprocess.Popen([sys.executable, "-m", "supirkit.cli", "curate", str(photos), "--out", str(out),
                               *CURATE, "--set", "runner.executor=ray", "--set", "runner.num_cpus_per_task=1"],
                              cwd=ROOT, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        held = cluster.wait_for_hold()
        # a write unit is open on the doomed node (its temporary tar exists), the other node goes on
        assert _leftovers(out), "the held unit should have opened its shard"
        cluster.kill(cluster.nodes[0])
        code, log = _wait(driver)
    finally:
        driver.kill()
    assert code == 0, log[-4000:]
    assert held and "1 failed" not in log
    resumed = read_set(out)
    assert sorted(resumed) == sorted(curated_on_one_node)  # nothing lost or doubled (read_set checks doubles)
    for key, (image, meta) in curated_on_one_node.items():
        assert resumed[key][0] == image, key
        assert resumed[key][1] == meta, key
    assert not _leftovers(out)


def test_caption_actors_survive_a_worker_node_lost_mid_shard(cluster, tiny_models, tmp_path):
    shards = make_shards(tmp_path / "in", n_shards=4, per_shard=3)
    argv = ["caption", shards, "--model", tiny_models["llava"], "--config", "caption/demo.yaml",
            "--set", "generation.max_new_tokens=6", "--set", "caption.batch_size=4",
            "--set", "runner.progress=log"]
    if "sdxl" in tiny_models:
        argv += ["--set", f"tokens.tokenizer={tiny_models['sdxl']}"]
    single = _cli([*argv, "--out", tmp_path / "single", "--set", "runner.executor=local"],
                  dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert single.returncode == 0, single.stdout[-3000:]

    doomed = cluster.add_worker(hold="caption")
    # one actor per node (an actor takes the node's one CPU): the actor on the doomed node holds its shard
    actors = len(cluster.cluster.worker_nodes)
    driver = subprocess.Popen([sys.executable, "-m", "supirkit.cli", *map(str, argv), "--out", str(tmp_path / "ray"),
                               "--set", "runner.executor=ray", "--set", f"runner.num_actors={actors}",
                               "--set", "runner.num_cpus_per_task=1", "--set", "runner.num_gpus_per_actor=0"],
                              cwd=ROOT, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        cluster.wait_for_hold()
        cluster.kill(doomed)
        cluster.nodes.append(cluster.add_worker())  # the node that replaces it (an autoscaler's work)
        code, log = _wait(driver)
    finally:
        driver.kill()
    assert code == 0, log[-4000:]

    def captions(out: Path) -> dict:
        import pyarrow.parquet as pq

        rows = {}
        for part in sorted((out / "__supirkit__" / "captions").glob("captions-*.parquet")):
            for r in pq.read_table(part, columns=["key", "txt"]).to_pylist():
                assert r["key"] not in rows, f"{r['key']} captioned twice"
                rows[r["key"]] = r["txt"]
        return rows

    got, want = captions(tmp_path / "ray"), captions(tmp_path / "single")
    assert len(want) == 12 and got == want
    assert not _leftovers(tmp_path / "ray")


def test_ray_job_submit_driver_killed_then_resubmitted_resumes(cluster, photos, curated_on_one_node, tmp_path):
    out = tmp_path / "curated"
    ray = str(Path(sys.executable).with_name("ray"))
    entry = [sys.executable, "-m", "supirkit.cli", "curate", str(photos), "--out", str(out), *CURATE,
             "--set", "runner.executor=ray", "--set", "runner.num_cpus_per_task=1"]
    env = cluster.env()
    env.pop("RAY_ADDRESS")

    def submit(runtime_env: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [ray, "job", "submit", "--address", cluster.dashboard]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        for _ in range(30):  # the head's job agent registers a few seconds after the head is up
            proc = subprocess.run([*cmd, "--", *entry], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=600)
            if "No available agent to submit job" not in proc.stdout:
                return proc
            time.sleep(2)
        return proc

    # the driver SIGKILLs itself once its first unit is complete (the scoring pass)
    killed = submit({"env_vars": {"SUPIRKIT_FAULT": "after_shards:1"}})
    assert killed.returncode != 0, killed.stdout[-3000:]
    signals = out / "__supirkit__" / "work" / "signals" / "_stats"  # the units' done markers
    done = {p.name: p.stat().st_mtime_ns for p in signals.glob("*.stats.json")}
    assert done, killed.stdout[-3000:]
    assert not (out / "__supirkit__" / "summary.json").exists()

    again = submit()
    assert again.returncode == 0, again.stdout[-4000:]
    assert all((signals / name).stat().st_mtime_ns == t for name, t in done.items())  # resumed, not redone
    resumed = read_set(out)
    assert sorted(resumed) == sorted(curated_on_one_node)
    for key, (image, _) in curated_on_one_node.items():
        assert resumed[key][0] == image, key
    assert not _leftovers(out)
