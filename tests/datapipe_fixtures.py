"""Helpers shared by the datapipe / shard / inspect tests: tiny image folders, running ``supirkit shard``
in-process or as a child process, and reading a shard set back as {key: image bytes}."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ["--set", "runner.executor=local", "--set", "runner.progress=none"]


def jpeg_bytes(seed: int, h: int = 24, w: int = 32, quality: int = 90) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(seed: int, h: int = 20, w: int = 20) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_images(folder: Path, n: int, start: int = 0, sub: str = "") -> dict[str, bytes]:
    """``n`` small distinct JPEGs (``img_XXX.jpg``); returns relative name -> bytes."""
    out = {}
    target = folder / sub if sub else folder
    target.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        name = f"img_{i:03d}.jpg"
        data = jpeg_bytes(i, 20 + i % 7, 28 + i % 5)
        (target / name).write_bytes(data)
        out[f"{sub}/{name}" if sub else name] = data
    return out


def run_shard(argv: list[str]) -> int:
    """``supirkit shard ...`` in this process."""
    from supirkit.cli import main

    return main(["shard", *argv])


def shard_cli(argv: list[str], env_extra: dict | None = None, check: bool = True, timeout: int = 120):
    """``supirkit shard ...`` as a child process; returns (returncode, stdout+stderr, peak RSS bytes)."""
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, "-m", "supirkit.cli", "shard", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"supirkit shard exited {proc.returncode}:\n{text}")
    return proc.returncode, text


#: runs ``supirkit shard`` and then prints the process's own peak RSS (VmHWM) as the last line
_RSS_BOOTSTRAP = """
import sys
from supirkit.cli import main
code = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(f"__peak_rss_kb__={hwm[0].split()[1]}", flush=True)
sys.exit(code)
"""


def shard_cli_rss(argv: list[str], timeout: int = 120) -> tuple[int, str, int]:
    """Like ``shard_cli`` but also the child's own peak RSS in bytes. Read from the child's VmHWM (its
    address space only): ``wait4``'s ru_maxrss would not do, Linux carries the parent's peak RSS over
    into a child across fork/exec, so it would report this test process's size."""
    import re

    proc = subprocess.run([sys.executable, "-c", _RSS_BOOTSTRAP, "shard", *argv], cwd=ROOT, env=dict(os.environ),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    text = proc.stdout.decode("utf-8", "replace")
    found = re.findall(r"^__peak_rss_kb__=(\d+)$", text, re.M)
    assert found, f"the child did not report its peak RSS (exit {proc.returncode}):\n{text}"
    return proc.returncode, text, int(found[-1]) * 1024


def read_set(out_dir: Path) -> dict[str, tuple[bytes, dict]]:
    """Every sample of a shard set: key -> (image bytes, json), read with plain ``tarfile``; asserts that
    no key appears twice across the set."""
    from supirkit.datapipe.tario import list_shards

    samples: dict[str, tuple[bytes, dict]] = {}
    for url in list_shards(out_dir):
        current: dict[str, dict] = {}
        with tarfile.open(url) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                current.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, fields in current.items():
            assert key not in samples, f"key {key} appears twice"
            image = next(v for k, v in fields.items() if k not in ("json", "txt"))
            samples[key] = (image, json.loads(fields["json"]))
    return samples


def keys_and_bytes(out_dir: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in read_set(out_dir).items()}


def rejections(out_dir: Path) -> list[dict]:
    from supirkit.datapipe.runner import iter_rejections

    return list(iter_rejections(out_dir, "shard"))


def stats_files(out_dir: Path, prefix: str = "shard") -> list[Path]:
    from supirkit.datapipe.shard_format import ShardSetLayout

    return sorted(ShardSetLayout(out_dir).stats_dir.glob(f"{prefix}-*.json"))


def total_inputs(out_dir: Path) -> int:
    return sum(json.loads(p.read_text())["counts"].get("inputs", 0) for p in stats_files(out_dir))


def write_img2dataset_folder(folder: Path, n_per_shard: int = 3, shards: int = 2, seed0: int = 500) -> dict:
    """img2dataset's layout: ``00000.tar`` with ``000000000.jpg/.json/.txt``, ``00000.parquet`` (also the
    failed rows) and ``00000_stats.json``; returns key -> (image bytes, caption)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for s in range(shards):
        rows = []
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(n_per_shard):
                key = f"{s:05d}{i:04d}"
                img = jpeg_bytes(seed0 + s * 100 + i, 30, 40)
                caption = f"a photo number {i} of shard {s}"
                meta = {"url": f"http://example.com/{key}.jpg", "caption": caption, "key": key, "status": "success",
                        "error_message": None, "width": 40, "height": 30, "original_width": 400,
                        "original_height": 300, "similarity": 0.25 + 0.01 * i}
                for ext, data in (("jpg", img), ("json", json.dumps(meta).encode()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append(meta)
                truth[key] = (img, caption)
        rows.append({"url": "http://example.com/dead.jpg", "caption": "gone", "key": f"{s:05d}9999",
                     "status": "failed_to_download", "error_message": "404", "width": None, "height": None,
                     "original_width": None, "original_height": None, "similarity": None})
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:05d}.parquet")
        (folder / f"{s:05d}_stats.json").write_text(json.dumps(
            {"count": n_per_shard + 1, "successes": n_per_shard, "failed_to_download": 1,
             "status_dict": {"success": n_per_shard, "404": 1}}))
    return truth
