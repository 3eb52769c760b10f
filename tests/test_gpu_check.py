"""benchmarks/gpu_check.py: its dry run (every part's code path at tiny size on CPU) and what it needs on the
GPU machine (the carried wheel list against the machine's image), so the check cannot rot between loans."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def _run_check(tmp_path, *args, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # the check runs local executors only
    return subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    proc = _run_check(tmp, "--dry")
    path = tmp / "out" / "gpu_check.json"
    result = json.loads(path.read_text()) if path.is_file() else None
    return proc, result, tmp


def _cases(result, part):
    return {c["case"]: c for c in result["parts"][part]["cases"]}


def test_dry_run_measures_every_part(dry_run):
    proc, result, tmp = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert result["dry"] is True
    assert list(result["parts"]) == ["curate", "caption", "negatives", "train", "restore"]
    for name, part in result["parts"].items():
        assert part["status"] == "ok", (name, part.get("traceback"))
        assert part["cases"] and not [c for c in part["cases"] if "skipped" in c or "error" in c], (name, part["cases"])
    # the markdown table is printed and written
    assert "## GPU check (dry run: tiny models on CPU, no GPU figures)" in proc.stdout
    assert (tmp / "out" / "gpu_check.md").read_text() in proc.stdout


def test_dry_run_covers_the_figures_the_gpu_run_reports(dry_run):
    _, result, _ = dry_run
    curate = _cases(result, "curate")
    assert {"musiq", "topiq_nr", "clipiqa"} <= set(curate)
    assert any(k.startswith("aesthetic + embedding") for k in curate)
    assert all(c["images_per_s"] > 0 for c in curate.values())
    caption = _cases(result, "caption")
    assert [c["batch"] for c in caption.values()] == [1, 2]
    assert all(c["captions"] == 2 * c["batch"] and c["new_tokens_per_s"] > 0 for c in caption.values())
    negatives = _cases(result, "negatives")
    assert len(negatives) == 1 and next(iter(negatives.values()))["images_per_s"] > 0
    train = _cases(result, "train")
    for layout in ("released", "trimmed"):
        for ckpt in ("on", "off"):
            rows = [c for k, c in train.items() if k.startswith(f"{layout} trunk, checkpointing {ckpt}, batch")]
            assert any("largest" in k for k in train if k.startswith(f"{layout} trunk, checkpointing {ckpt}"))
            assert all(r["samples_per_s"] > 0 for r in rows)
        assert train[f"loader cores per GPU, {layout} trunk, batch 1"]["cores_per_gpu"] > 0
    options = [c["options"] for c in train.values() if c.get("options") not in (None, "defaults")]
    assert {"attention=flash", "attention=math", "channels_last", "channels_last, vae_slicing"} <= set(options)
    restore = _cases(result, "restore")
    assert restore["64 px, defaults"]["tiled"] is False
    assert restore["128 px, tiled (tiling.mode=always)"]["tiled"] is True
    assert {"64 px, attention=flash", "64 px, channels_last", "64 px, compile_unet (compiled)",
            "VAE encode + decode 128 px, vae_tiling"} <= set(restore)


def test_everything_the_check_imports_is_on_the_gpu_machine_or_carried(dry_run):
    """What the dry run imported must be on the machine's image, in the wheel list, or skipped there with a
    reason: a new import in any part fails here, not on the GPU machine."""
    _, result, _ = dry_run
    fetch = _bench_module("fetch_gpu_wheels")
    pins, _, skips = fetch.read_wheel_list()
    known = set(fetch.read_image()) | set(pins) | set(skips)
    for name, part in result["parts"].items():
        missing = [group for group in part["distributions"] if not set(group) & known]
        assert not missing, f"{name} imports {missing}: add them to benchmarks/gpu_wheels.txt (or skip with a reason)"


def test_wheel_list_is_what_the_dry_run_used_and_resolves_against_the_image():
    """Each carried wheel is the version installed here (the one the dry run passed with), and every
    requirement of the carried packages (and of supirkit) is carried, on the image, or skipped."""
    fetch = _bench_module("fetch_gpu_wheels")
    pins, build, skips = fetch.read_wheel_list()
    assert build == {"openai-clip"}
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: carried {version}, installed {metadata.version(name)}"
    owners = {name: metadata.requires(name) or [] for name in [*pins, "supirkit"]}
    problems, _ = fetch.resolve(owners, pins, skips, fetch.read_image())
    assert not problems
    assert all(reason for reason in skips.values())
    # carried although the image has them: for a version the image may lack
    assert not (set(pins) & set(fetch.read_image())) - {"setuptools", "typing-extensions", "timm"}


def test_a_part_past_its_time_limit_is_stopped_and_reported(tmp_path):
    proc = _run_check(tmp_path, "--dry", "--parts", "train", "--total-s", "0.5", timeout=300)
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert proc.returncode == 1
    assert result["parts"]["train"]["status"].startswith("stopped at its time limit")
    assert "stopped at its time limit" in proc.stdout


def test_recorder_skips_a_case_that_does_not_fit(tmp_path):
    import time

    common = _bench_module("_gpu_common")
    rec = common.Recorder(tmp_path / "part.json", "train", deadline=time.time() + 5)
    assert rec.fits("quick", 1) and not rec.fits("slow", 60)
    rec.case("quick", seconds=0.5)
    saved = json.loads((tmp_path / "part.json").read_text())
    assert [c["case"] for c in saved["cases"]] == ["slow", "quick"]
    assert saved["cases"][0]["skipped"].startswith("over budget")


def test_largest_batch_follows_the_memory_model_and_backs_off_after_out_of_memory(tmp_path):
    """The GPU path of the search, with a stand-in step: peak = 30 GiB + 1 GiB per sample, and anything above
    batch 40 runs out of memory (as fragmentation can make happen below the planned share of the card)."""
    import time

    from supirkit.model.runtime import RuntimeOptions

    common = _bench_module("_gpu_common")
    train = _bench_module("_gpu_train")

    class Step:
        layout, options = "released", RuntimeOptions()

        def __init__(self):
            self.tried = []

        def measure(self, batch, steps, warmup, px):
            self.tried.append(batch)
            if batch > 40:
                return {"batch": batch, "oom": True}
            return {"batch": batch, "median_s_per_step": 0.1 * batch, "samples_per_s": 10.0, "checkpointing": True,
                    "peak_gib": 30.0 + batch}

    rec = common.Recorder(tmp_path / "train.json", "train", deadline=time.time() + 3600)
    small = {"batch": 4, "peak_gib": 34.0, "median_s_per_step": 0.4}
    large = {"batch": 8, "peak_gib": 38.0, "median_s_per_step": 0.8}
    step = Step()
    row = train.largest_batch(rec, step, small, large, common.FULL, "released", total=80.0)
    assert step.tried == [40] and row["batch"] == 40  # (0.92 x 80 - 30) / 1 = 43.6 -> 40, a multiple of 4
    step = Step()
    row = train.largest_batch(rec, step, small, large, common.FULL, "released", total=90.0)
    assert step.tried == [52, 40] and row["batch"] == 40  # 52.8 -> 52: out of memory -> 80 % -> 40
    assert any("batch 52 ran out of memory" in n for n in json.loads((tmp_path / "train.json").read_text())["notes"])
