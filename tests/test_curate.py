"""supirkit curate: the whole flow on generated photos (every input accounted for, rejected inputs never
in the shards), --select-only, resume after a kill, Ray execution with a learned scorer, the
missing-weights error, and the pieces (rules, crops, duplicate grouping, learned scorers)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256  # short side of the generated "high-resolution" photos (configs/curate/demo.yaml: 256 crops)
FAST = ["--config", "curate/demo.yaml", "--set", "runner.progress=none", "--set", "report.grid_samples=3",
        "--set", "report.thumb_size=64"]
#: what each generated file is -> (accepted, stage, acceptable reasons)
EXPECTED = {
    "good": (True, None, {None}),
    "blurred": (False, "rules", {"sharp", "full_resolution"}),
    "upscaled": (False, "rules", {"sharp", "full_resolution"}),
    "noisy": (False, "rules", {"clean"}),
    "compressed": (False, "rules", {"jpeg_quality", "no_blocks"}),
    "flat_graphic": (False, "rules", {"not_flat", "textured", "detailed"}),
    "too_small": (False, "prefilter", {"too_small"}),
    "corrupt": (False, "decode", {"truncated", "not_an_image", "undecodable", "corrupt"}),
    "near_duplicate": (False, "dedup", {"duplicate"}),
    "exact_duplicate": (False, "dedup", {"duplicate"}),
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, dict]:
    from supirkit.demo.samples import make_sample_folder

    folder = tmp_path_factory.mktemp("curate-samples")
    truth = make_sample_folder(folder, size=SIZE)
    return folder, truth


def _cli(argv) -> int:
    from supirkit.cli import main

    return main([str(a) for a in argv])


def _scores(out: Path) -> list[dict]:
    from supirkit.datapipe.manifest import open_manifest

    return open_manifest(out / "__supirkit__" / "scores").to_table().to_pylist()


def _shard_samples(out: Path) -> list[dict]:
    """json of every sample in the curated shards, with the decoded image size."""
    import io

    from PIL import Image

    from supirkit.datapipe.tario import list_shards, read_shard, sample_image, sample_meta

    found = []
    for url in list_shards(out):
        for s in read_shard(url):
            ext, data = sample_image(s)
            meta = sample_meta(s)
            img = Image.open(io.BytesIO(data))
            meta["_size"], meta["_ext"] = img.size, ext
            if ext == "jpg":
                from PIL import JpegImagePlugin

                meta["_subsampling"] = JpegImagePlugin.get_sampling(img)  # 0 = 4:4:4
            found.append(meta)
    return found


def _check_verdicts(out: Path, truth: dict) -> list[dict]:
    rows = _scores(out)
    by_name = {Path(r["source"]).name: r for r in rows}
    # one row for EVERY input, accepted or not (the truth file is not an image input)
    assert sorted(by_name) == sorted(truth), (sorted(by_name), sorted(truth))
    assert len(rows) == len(truth)
    for name, kind in truth.items():
        r = by_name[name]
        accepted, stage, reasons = EXPECTED[kind]
        assert r["accepted"] is accepted, (name, kind, r)
        assert r["stage"] == stage, (name, kind, r["stage"], r["reason"])
        assert r["reason"] in reasons, (name, kind, r["reason"])
        if stage == "rules":
            assert r["reason"] in r["failed_rules"]  # a list column
        if stage == "dedup":
            assert Path(r["duplicate_of"]).name in ("photo_00.jpg", "photo_01.jpg")
    # the kept member of each duplicate group is the original
    assert by_name["photo_00.jpg"]["accepted"] and by_name["photo_01.jpg"]["accepted"]
    return rows


def _check_shards(out: Path, rows: list[dict], crop: int = SIZE, codec: str = "jpg") -> list[dict]:
    accepted = {r["source"] for r in rows if r["accepted"]}
    metas = _shard_samples(out)
    # rejected inputs never reach the shards; every accepted one does (one crop each)
    assert sorted(m["source"] for m in metas) == sorted(accepted)
    row_of = {r["source"]: r for r in rows}
    for m in metas:
        r = row_of[m["source"]]
        assert m["_size"] == (crop, crop) and m["_ext"] == codec
        assert codec != "jpg" or m["_subsampling"] == 0  # no chroma subsampling
        x0, y0, x1, y1 = m["crop_box"]
        side = min(r["width"], r["height"])
        # resize_center: the centred short-side square of the original, scaled to the crop size
        assert (x1 - x0, y1 - y0) == (side, side)
        assert (x0, y0) == ((r["width"] - side) // 2, (r["height"] - side) // 2)
        assert m["scale"] == pytest.approx(crop / side, abs=1e-5)
        assert (m["orig_width"], m["orig_height"]) == (r["width"], r["height"])
        assert m["codec"] == codec and m["quality"] == (95 if codec == "jpg" else 9)
        assert m["subset"] == "demo" and m["source_key"] == r["key"]
        assert m["scores"]["sharpness"] == r["sharpness"]
    return metas


def _check_report(out: Path) -> None:
    import re

    html = (out / "__supirkit__" / "report" / "report.html").read_text()
    images = re.findall(r'src="([^"]+\.png)"|src=\'([^\']+\.png)\'', html)
    names = {a or b for a, b in images}
    for must in ("report-funnel.png", "report-hist-sharpness.png", "report-accepted.png", "report-near.png",
                 "report-clear.png"):
        assert must in names, must
    for n in names:
        assert (out / "__supirkit__" / "report" / n).stat().st_size > 1000, n
    assert "Rejected, by reason" in html and "too_small" in html
    # every rejection reason gets its own examples: pictures of the inputs it rejected (duplicates and
    # prefiltered images included), or their names and details when they cannot be decoded
    funnel = json.loads((out / "__supirkit__" / "summary.json").read_text())["funnel"]
    stage_of = {r["reason"]: r["stage"] for r in _scores(out) if not r["accepted"]}
    for reason in funnel["rejected_by_reason"]:
        assert f"<h3>{reason} <small>" in html, reason
        if stage_of[reason] in ("rules", "dedup", "prefilter"):
            assert f"report-reason-{reason}.png" in names, reason


# ------------------------------------------------------------------------------------------ the flow

def test_curate_on_ray_with_aesthetics_accounts_for_every_input(samples, tmp_path, ray_address, tiny_models):
    """Scoring as Ray tasks, the learned pass (tiny open_clip + LAION-style head) as a Ray actor pool."""
    folder, truth = samples
    out = tmp_path / "curated"
    code = _cli(["curate", folder, "--out", out, *FAST, "--set", "runner.executor=ray",
                 "--set", "input.inputs_per_partition=6",
                 "--set", "signals.aesthetic.enabled=true",
                 "--set", f"signals.aesthetic.clip_model={tiny_models['clip']}",
                 "--set", f"signals.aesthetic.head_weights={tiny_models['aesthetic']}",
                 "--set", "signals.device=cpu"])
    assert code == 0
    rows = _check_verdicts(out, truth)
    scored = [r for r in rows if r["status"] == "scored"]
    assert scored and all(isinstance(r["aesthetic"], float) for r in scored)
    assert all(r["aesthetic"] is None for r in rows if r["status"] != "scored")
    assert "clip_embedding" not in rows[0]  # embeddings are for grouping, not part of the scores table
    metas = _check_shards(out, rows)
    assert all("aesthetic" in m["scores"] for m in metas)
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    f = summary["funnel"]
    assert f["inputs"] == len(truth) and f["accepted"] == len(metas) == f["training_samples"] == 6
    assert sum(f["rejected_by_reason"].values()) == f["inputs"] - f["accepted"]
    assert f["rejected_by_stage"] == {"prefilter": 1, "decode": 2, "rules": 5, "dedup": 2}
    _check_report(out)
    # the selection is replayable with the shard command's condition language
    from supirkit.datapipe.manifest import select

    again = select(out / "__supirkit__" / "scores", summary["selection_condition"] + " and status == 'scored'")
    assert len(again) == len([r for r in rows if r["accepted"] or r["stage"] == "dedup"])


@pytest.mark.ray
def test_curate_as_a_separate_driver_joins_the_cluster_through_ray_address(samples, tmp_path, ray_address):
    """What ``ray job submit ... -- supirkit curate`` does: the unchanged command in its own driver process,
    started elsewhere than the repository, with RAY_ADDRESS pointing at the running cluster and no
    terminal (plain progress lines for ``ray job logs``)."""
    folder, truth = samples
    out = tmp_path / "curated"
    env = dict(os.environ, RAY_ADDRESS=ray_address)
    env.pop("SUPIRKIT_FAULT", None)
    argv = ["curate", folder, "--out", out, "--config", "curate/demo.yaml", "--set", "runner.executor=ray",
            "--set", "runner.progress=log", "--set", "input.inputs_per_partition=8", "--set", "report.enabled=false"]
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", *map(str, argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # progress lines (no terminal): inputs and samples with rate, units done
    lines = proc.stderr.splitlines()[::-1]  # the last line of each pass holds its totals
    score_line = next(x for x in lines if x.startswith("[curate: score]"))
    assert "16/16 inputs (100%)" in score_line and "2/2 units" in score_line, proc.stderr
    write_line = next(x for x in lines if x.startswith("[curate: write]"))
    assert "6 samples" in write_line and "1/1 units" in write_line, proc.stderr
    rows = _check_verdicts(out, truth)
    _check_shards(out, rows)


def test_select_only_reselects_without_rescoring_and_resume_after_a_kill(samples, tmp_path):
    folder, truth = samples
    out = tmp_path / "curated"
    argv = ["curate", folder, "--out", out, *FAST, "--set", "runner.executor=local",
            "--set", "input.inputs_per_partition=4"]
    # killed by the fault hook once two of the four scoring partitions are done
    env = dict(os.environ, SUPIRKIT_FAULT="after_shards:2")
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    done = sorted((out / "__supirkit__" / "work" / "signals" / "_stats").glob("signals-*.stats.json"))
    assert len(done) == 2
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "__supirkit__" / "work" / "signals").glob("signals-*")}
    assert _cli(argv) == 0  # the rerun finishes the job; done partitions are not redone
    for name, mtime in kept.items():
        assert (out / "__supirkit__" / "work" / "signals" / name).stat().st_mtime_ns == mtime, name
    rows = _check_verdicts(out, truth)
    _check_shards(out, rows)

    # new thresholds: re-selected from the scores; nothing is rescored
    signals = {p.name: p.stat().st_mtime_ns for p in (out / "__supirkit__" / "work" / "signals").glob("*")}
    cfg = (ROOT / "configs/curate/demo.yaml").read_text()
    strict = tmp_path / "strict.yaml"
    sharp = sorted(r["sharpness"] for r in rows if r["accepted"])
    cut = (sharp[2] + sharp[3]) / 2  # half the accepted photos fall below this
    assert "{name: sharp, signal: sharpness, min: 0.11}" in cfg
    strict.write_text(cfg.replace("{name: sharp, signal: sharpness, min: 0.11}",
                                  f"{{name: sharp, signal: sharpness, min: {cut:.4f}}}"))
    select_argv = ["curate", "--out", out, "--select-only", "--config", strict, "--set", "runner.progress=none",
                   "--set", "runner.executor=local", "--set", "report.grid_samples=3",
                   "--set", "report.thumb_size=64", "--set", "input.inputs_per_partition=4"]
    assert _cli(select_argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "__supirkit__" / "work" / "signals").glob("*")} == signals
    rows2 = _scores(out)
    by = {r["source"]: r for r in rows2}
    newly = [s for s, r in by.items() if r["reason"] == "sharp" and Path(s).name.startswith("photo_")]
    assert len(newly) >= 2
    assert all(by[s]["sharpness"] < cut for s in newly)
    metas = _shard_samples(out)
    assert sorted(m["source"] for m in metas) == sorted(s for s, r in by.items() if r["accepted"])
    assert len(metas) < 6
    write_stats = [json.loads(p.read_text()) for p in (out / "__supirkit__" / "stats").glob("curated-*.json")]
    # the write pass re-read only the selected sources
    assert sum(s["counts"].get("inputs", 0) for s in write_stats) == len(metas)
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert f"sharpness >= {cut:.4f}" in summary["selection_condition"]

    # a changed scoring config cannot be re-selected: one clear error
    assert _cli(select_argv + ["--set", "signals.cheap.tile_size=128"]) == 2
    # --select-only without a scored run
    assert _cli(["curate", "--out", tmp_path / "nothing", "--select-only", *FAST]) == 2


def test_png_output_and_grid_crops(samples, tmp_path):
    folder, truth = samples
    out = tmp_path / "grid"
    assert _cli(["curate", folder, "--out", out, *FAST, "--set", "runner.executor=local",
                 "--set", "output.crop.mode=grid", "--set", "output.crop.size=128",
                 "--set", "output.crop.max_crops=2", "--set", "output.encode.codec=png",
                 "--set", "report.enabled=false"]) == 0
    rows = {r["source"]: r for r in _scores(out)}
    metas = _shard_samples(out)
    per_source: dict[str, list] = {}
    for m in metas:
        per_source.setdefault(m["source"], []).append(m)
        assert m["_size"] == (128, 128) and m["_ext"] == "png" and m["scale"] == 1.0
        x0, y0, x1, y1 = m["crop_box"]
        assert x1 - x0 == 128 and y1 - y0 == 128
        r = rows[m["source"]]
        assert 0 <= x0 and x1 <= r["width"] and 0 <= y0 and y1 <= r["height"]
    assert set(per_source) == {s for s, r in rows.items() if r["accepted"]}
    for src, ms in per_source.items():
        assert len(ms) == 2 and len({m["key"] for m in ms}) == 2
        a, b = (m["crop_box"] for m in ms)
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # non-overlapping


def test_faces_profile_writes_its_own_tagged_shard_set(samples, tmp_path):
    """configs/curate/faces.yaml end to end (scaled to the small sample images): its own shard prefix,
    every sample tagged "subset": "faces", its own rules (colour) in the selection, defects still rejected."""
    folder, truth = samples
    out = tmp_path / "faces"
    assert _cli(["curate", folder, "--out", out, "--config", "curate/faces.yaml", "--set", "runner.executor=local",
                 "--set", "runner.progress=none", "--set", f"prefilter.min_side={SIZE}",
                 "--set", f"output.crop.size={SIZE}", "--set", "report.enabled=false"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["faces-000000.tar"]
    rows = {Path(r["source"]).name: r for r in _scores(out)}
    assert sorted(rows) == sorted(truth)
    for name, kind in truth.items():
        if kind in ("blurred", "noisy", "compressed", "too_small", "corrupt"):
            assert not rows[name]["accepted"], (name, rows[name]["reason"])
    metas = _shard_samples(out)
    assert metas and sorted(m["source"] for m in metas) == sorted(r["source"] for r in rows.values() if r["accepted"])
    assert {m["subset"] for m in metas} == {"faces"}
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert summary["subset"] == "faces" and summary["prefix"] == "faces"
    assert "chroma >= 2" in summary["selection_condition"]


def test_missing_pyiqa_weights_is_one_clear_error(samples, tmp_path, capsys):
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR  # where pyiqa looks ($TORCH_HOME/hub/pyiqa)

    folder, _ = samples
    weight = Path(DEFAULT_CACHE_DIR) / "musiq_koniq_ckpt-e95806b9.pth"
    assert not weight.exists()
    code = _cli(["curate", folder, "--out", tmp_path / "out", *FAST, "--set", "runner.executor=local",
                 "--set", "signals.iqa.metrics=[musiq]", "--set", "signals.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("supirkit curate: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"place it at {weight}" in errors[0] and "musiq_koniq_ckpt-e95806b9.pth" in errors[0]
    assert not weight.exists()  # nothing was downloaded
    assert not (tmp_path / "out").exists()  # found before any output was made (no scoring pass first)
    # every missing model is named, one line each, before any work
    code = _cli(["curate", folder, "--out", tmp_path / "out2", *FAST, "--set", "signals.iqa.metrics=[musiq]",
                 "--set", "signals.aesthetic.enabled=true", "--set", "signals.aesthetic.clip_model=/nowhere/clip"])
    err = capsys.readouterr().err
    assert code == 2 and "musiq" in err and "aesthetic:" in err and "head_weights is not set" in err, err
    assert not (tmp_path / "out2").exists()


def test_a_url_whose_filesystem_is_not_installed_fails_in_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import fsspec

    def missing(protocol):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    assert _cli(["curate", "s3://bucket/photos", "--out", tmp_path / "out", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["supirkit curate: error: s3://bucket/photos: reading s3:// needs s3fs, which is not installed: "
                   "pip install 'supirkit[s3]'"]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ pieces

def test_importing_pyiqa_leaves_transformers_llama_alone(tmp_path):
    """Building a pyiqa metric can import pyiqa's Q-Align code, which patches transformers' Llama classes;
    a process that scored with pyiqa must still build a LLaVA afterwards (curate and caption can share a
    Ray worker or a notebook). ``_lazy_import_arch`` of an unknown name is pyiqa's import-everything path."""
    code = (
        "import transformers.models.llama.modeling_llama as m\n"
        "before = m.LlamaDecoderLayer\n"
        "import pyiqa.archs\n"
        "from supirkit.metrics.loading import transformers_llama_untouched\n"
        "with transformers_llama_untouched():\n"
        "    pyiqa.archs._lazy_import_arch('NoSuchArch')\n"
        "    assert m.LlamaDecoderLayer is not before, 'pyiqa no longer patches: drop the guard'\n"
        "assert m.LlamaDecoderLayer is before, m.LlamaDecoderLayer\n"
        "from supirkit.tiny.llava import build_tiny_llava\n"
        f"build_tiny_llava({str(tmp_path / 'llava')!r}, seed=0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", ["default", "full", "faces", "demo"])
def test_shipped_configs_load(name):
    from supirkit.curation import CurateConfig
    from supirkit.curation.rules import compile_rules
    from supirkit.datapipe import load_config

    cfg = load_config(CurateConfig, f"curate/{name}.yaml")
    assert compile_rules(cfg.rules).text.count(" and ") == len(cfg.rules.checks) - 1
    if name == "faces":  # its own shard set, tagged so training can weight it
        assert cfg.output.subset == "faces" and cfg.output.prefix == "faces"
    if name == "default":  # no weights needed
        assert not cfg.needs_models and cfg.prefilter.min_side == 1024 and cfg.output.crop.size == 1024
    if name == "full":
        assert cfg.signals.iqa.metrics and cfg.signals.aesthetic.enabled and cfg.dedup.semantic.enabled


def test_rules_compile_to_the_shard_condition_language():
    from supirkit.curation.config import RulesConfig
    from supirkit.curation.rules import compile_rules
    from supirkit.datapipe.conditions import Condition

    cfg = RulesConfig(combine="all", checks=[
        {"name": "sharp", "signal": "sharpness", "min": 0.11},
        {"name": "q", "signal": "jpeg_quality", "min": 61, "if_missing": "pass"},
        {"name": "band", "signal": "noise_sigma", "min": 0.5, "max": 3},
        {"name": "custom", "where": "not is_grayscale"}])
    rules = compile_rules(cfg)
    assert rules.text == ("(sharpness >= 0.11) and (jpeg_quality is None or jpeg_quality >= 61) and "
                          "(noise_sigma >= 0.5 and noise_sigma <= 3) and (not is_grayscale)")
    Condition(rules.text)  # the same language as supirkit shard --where
    good = {"sharpness": 0.3, "jpeg_quality": None, "noise_sigma": 1.0, "is_grayscale": False}
    assert rules.failed(good) == []
    bad = dict(good, sharpness=None, jpeg_quality=40, noise_sigma=5.0)
    assert rules.failed(bad) == ["sharp", "q", "band"] and rules.rejects(rules.failed(bad))
    import pyarrow as pa

    assert rules.evaluate_table(pa.Table.from_pylist([good, bad])) == [[], ["sharp", "q", "band"]]
    anyr = compile_rules(RulesConfig(combine="any", checks=cfg.checks[:2]))
    assert not anyr.rejects(anyr.failed(dict(good, sharpness=0.0)))
    assert anyr.rejects(anyr.failed(dict(good, sharpness=0.0, jpeg_quality=10)))
    from supirkit.datapipe.config import ConfigError

    with pytest.raises(ConfigError, match="duplicate"):
        compile_rules(RulesConfig(checks=[cfg.checks[0], cfg.checks[0]]))
    with pytest.raises(ValueError, match="signal"):
        RulesConfig(checks=[{"name": "x", "signal": "sharpness"}])


def test_crop_plans():
    from supirkit.curation.config import CropConfig
    from supirkit.curation.crops import apply_crop, plan_crops

    (b,) = plan_crops(3000, 2000, CropConfig(mode="resize_center", size=1024))
    assert b.as_list() == [500, 0, 2500, 2000] and b.scale == pytest.approx(1024 / 2000)
    (c,) = plan_crops(3000, 2000, CropConfig(mode="center", size=1024))
    assert c.as_list() == [988, 488, 2012, 1512] and c.scale == 1.0
    assert plan_crops(1000, 2000, CropConfig(size=1024)) == []
    grid = plan_crops(2100, 1100, CropConfig(mode="grid", size=1024, max_crops=4))
    assert [g.as_list() for g in grid] == [[26, 38, 1050, 1062], [1050, 38, 2074, 1062]]
    detail = np.zeros((11, 21), np.float32)
    detail[:, 15:] = 1.0  # the right-hand cell holds the detail
    (best,) = plan_crops(2100, 1100, CropConfig(mode="grid", size=1024, max_crops=1), detail)
    assert best.x0 == 1050
    rgb = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
    assert apply_crop(rgb, b, 1024).shape == (1024, 1024, 3)


def test_duplicate_grouping_exact_near_semantic(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from supirkit.curation.config import DedupConfig
    from supirkit.curation.dedup import group_duplicates, load_groups

    rng = np.random.default_rng(0)
    n = 40
    orders = np.arange(n) * (1 << 24)
    keys = [f"{rng.integers(0, 2**63):016x}" + "0" * 48 for _ in range(n)]
    keys[5] = keys[4]  # exact
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
    hashes[11] = hashes[10] ^ np.uint64(0b1011)  # 3 bits apart: near
    hashes[13] = hashes[12] ^ np.uint64(0x1F1F)  # 10 bits apart: not near
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb[21] = emb[20] + 0.01 * rng.normal(size=16)  # semantic
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    (tmp_path / "signals").mkdir()
    (tmp_path / "models").mkdir()
    sig = tmp_path / "signals" / "signals-000000.parquet"
    pq.write_table(pa.table({"order": orders, "partition": [0] * n, "source": [f"/in/{i}.jpg" for i in range(n)],
                             "key": keys, "phash": [f"{int(h):016x}" for h in hashes], "status": ["scored"] * n}),
                   sig)
    mod = tmp_path / "models" / "models-000000.parquet"
    pq.write_table(pa.table({"order": orders, "clip_embedding": [e.tolist() for e in emb]}), mod)
    cfg = DedupConfig(semantic={"enabled": True, "threshold": 0.95, "n_clusters": 3, "n_buckets": 2})
    done = group_duplicates([sig], [mod], tmp_path / "dedup", cfg, "h1")
    groups = load_groups(tmp_path / "dedup")
    pairs = {(4, 5), (10, 11), (20, 21)}
    members = {o // (1 << 24) for o in groups}
    assert members == {i for p in pairs for i in p}
    for a, b in pairs:
        assert groups[a << 24] == groups[b << 24]
    assert done["groups"] == 3 and done["edges"]["exact"] == 1 and done["edges"]["near"] >= 1
    assert done["edges"]["semantic"] >= 1


def test_semantic_sample_is_strided_copies_and_spill_is_one_file_per_bucket(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from supirkit.curation.dedup import _spill_by_cluster, sample_embeddings

    rng = np.random.default_rng(1)
    parts = []
    for p in range(3):
        emb = rng.normal(size=(100, 8)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        rows = [e.tolist() for e in emb]
        rows[7] = None  # an input without an embedding
        parts.append(tmp_path / f"models-{p}.parquet")
        pq.write_table(pa.table({"order": np.arange(100) + 1000 * p, "clip_embedding": rows}), parts[-1])
    n, sample = sample_embeddings(parts, 30)
    assert n == 297 and sample.shape == (30, 8)
    import weakref

    import supirkit.curation.dedup as dedup

    refs, pinned = [], []

    def fake_batches(_parts):  # each part's array must be freed once the sampler has moved on
        for i in range(4):
            pinned.append(i >= 2 and refs[i - 2]() is not None)
            emb = np.ones((100, 8), np.float32)
            refs.append(weakref.ref(emb))
            yield np.arange(100), emb

    monkeypatch.setattr(dedup, "_embedding_batches", fake_batches)
    assert sample_embeddings(parts, 30)[0] == 400
    monkeypatch.undo()
    assert not any(pinned)
    n, sample = sample_embeddings(parts, 1000)
    assert sample.shape == (297, 8)
    spill = tmp_path / "spill"
    spill.mkdir()
    cent = sample[:5]
    _spill_by_cluster(parts, cent, 2, spill, flush_rows=40)  # several flushes into the same files
    files = sorted(spill.glob("*.parquet"))
    assert len(files) <= 2
    t = pa.concat_tables([pq.read_table(f) for f in files])
    assert t.num_rows == 297 and len(set(t["order"].to_pylist())) == 297


def test_aesthetic_scorer_loads_tiny_open_clip_and_head_through_the_real_paths(tiny_models):
    from supirkit.curation.signals import ImageView
    from supirkit.curation.signals.models import ClipScorer
    from supirkit.datapipe.errors import MissingWeights
    from supirkit.demo.samples import textured_photo

    views = [ImageView(textured_photo(i, 96, 128)) for i in range(3)]
    s = ClipScorer(str(tiny_models["clip"]), None, str(tiny_models["aesthetic"]), aesthetic=True, embeddings=True,
                   batch_size=2, device="cpu")
    s.setup()
    rows = s.score_batch(views)
    assert len(rows) == 3 and all(np.isfinite(r["aesthetic"]) for r in rows)
    e = np.asarray([r["clip_embedding"] for r in rows])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert len({round(r["aesthetic"], 6) for r in rows}) == 3  # it looks at the pixels
    missing = ClipScorer(str(tiny_models["clip"]), None, "/nowhere/head.safetensors", True, False, device="cpu")
    with pytest.raises(MissingWeights, match="/nowhere/head.safetensors"):
        missing.setup()


@pytest.mark.parametrize("metric", ["musiq", "topiq_nr"])
def test_pyiqa_scorers_with_random_weights_on_native_tiles(metric):
    from supirkit.curation.signals import ImageView
    from supirkit.curation.signals.models import IQAScorer
    from supirkit.demo.samples import textured_photo

    views = [ImageView(textured_photo(i, 96, 160)) for i in range(2)]
    s = IQAScorer(metric, pretrained=False, tiles=2, tile_size=64, batch_size=4, device="cpu")
    s.setup()
    rows = s.score_batch(views)
    assert [list(r) for r in rows] == [[f"iqa.{metric}"]] * 2
    assert all(np.isfinite(r[f"iqa.{metric}"]) for r in rows)


def test_missing_weights_for_other_pyiqa_metrics_name_the_file(tmp_path, monkeypatch):
    from supirkit.curation.signals.models import IQAScorer, MissingWeights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeights) as info:
        IQAScorer("clipiqa", device="cpu").setup()
    msg = str(info.value)
    assert "clipiqa" in msg and "RN50.pt" in msg and str(tmp_path / "hub" / "clip") in msg
