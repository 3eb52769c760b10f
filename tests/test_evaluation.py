"""evaluation: `supirkit testset` (deterministic, resumable paired sets) and `supirkit evaluate` (scores matched by
key, tables in the papers' layout, conventions stated), end to end with the tiny SUPIR."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from degrade_fixtures import photo
from supir_fixtures import adaptor_dir, single_torch_thread, tiny_sdxl_dir  # noqa: F401  (fixtures)

LOCAL = ["--set", "runner.executor=local", "--set", "runner.progress=none"]
RANDOM_WEIGHTS = ["--set", "metrics.pretrained=false", "--set", "metrics.device=cpu"]


def cli(*args):
    from supirkit.cli import main

    return main([str(a) for a in args])


def read(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for i, (h, w) in enumerate([(90, 120), (100, 80), (72, 72)]):
        Image.fromarray(photo(i, h, w)).save(folder / f"photo{i}.png")
    return folder


def make_testset(photos, out, *extra):
    return cli("testset", photos, "--out", out, "--profile", "resshift", "--set", "crop.size=64", *LOCAL, *extra)


# ------------------------------------------------------------------------------------------- testset
def test_testset_pairs_are_a_function_of_profile_seed_and_key(photos, tmp_path, capsys):
    assert make_testset(photos, tmp_path / "a", "--set", "crop.per_image=2") == 0
    assert "testset: 6 pairs (resshift) in 1 shards" in capsys.readouterr().out
    assert make_testset(photos, tmp_path / "b", "--set", "crop.per_image=2") == 0
    from supirkit.evaluation.testset import pairs_folder

    hq_a, lq_a = (
        sorted((pairs_folder(tmp_path / "a") / "hq").iterdir()),
        sorted((pairs_folder(tmp_path / "a") / "lq").iterdir()),
    )
    assert len(hq_a) == len(lq_a) == 6 and [p.name for p in hq_a] == [p.name for p in lq_a]
    for p in hq_a + lq_a:  # same bytes from a second run into another folder
        assert p.read_bytes() == (pairs_folder(tmp_path / "b") / p.parent.name / p.name).read_bytes()
    assert read(hq_a[0]).shape == (64, 64, 3) and read(lq_a[0]).shape == (16, 16, 3)
    from supirkit.datapipe.tario import list_shards, read_shard

    samples = [s for url in list_shards(tmp_path / "a") for s in read_shard(url)]
    assert sorted(s["__key__"] for s in samples) == [p.stem for p in hq_a]
    meta = json.loads(samples[0]["json"])
    key = samples[0]["__key__"]
    assert meta["profile"] == "resshift" and meta["crop"]["size"] == 64 and meta["degradation"]["key"] == key
    assert meta["source"].endswith(".png")
    assert samples[0]["lq.png"] == (pairs_folder(tmp_path / "a") / "lq" / f"{key}.png").read_bytes()
    # the two crops of one photo differ; rerunning resumes (nothing redone); another seed needs --fresh
    assert not np.array_equal(read(hq_a[0]), read(hq_a[1]))
    assert make_testset(photos, tmp_path / "a", "--set", "crop.per_image=2") == 0
    assert "(1 already done)" in capsys.readouterr().out
    assert make_testset(photos, tmp_path / "a", "--set", "crop.per_image=2", "--seed", "5") == 2
    assert "different config" in capsys.readouterr().err
    assert make_testset(photos, tmp_path / "c", "--set", "crop.per_image=2", "--seed", "5") == 0
    assert (pairs_folder(tmp_path / "c") / "hq" / hq_a[0].name).read_bytes() != hq_a[0].read_bytes()  # new crop


def test_count_center_crops_and_tar_sources(photos, tmp_path):
    assert make_testset(photos, tmp_path / "t", "--count", 2, "--set", "crop.mode=center",
                   "--set", "crop.resize_short_side=64") == 0
    from supirkit.datapipe.tario import list_shards, read_shard

    samples = [s for url in list_shards(tmp_path / "t") for s in read_shard(url)]
    assert len(samples) == 2  # the first two photos in listing order
    meta = json.loads(samples[0]["json"])
    h, w = meta["crop"]["from"]
    assert min(h, w) == 64 and (meta["crop"]["top"], meta["crop"]["left"]) == ((h - 64) // 2, (w - 64) // 2)
    # a tar source: its members count one by one
    assert make_testset(tmp_path / "t" / "testset-000000.tar", tmp_path / "from_tar", "--count", 1) == 0
    assert len(list((tmp_path / "from_tar" / "__supirkit__" / "pairs" / "hq").iterdir())) == 1


@pytest.mark.parametrize("args,message", [
    (["--profile", "no_such_profile"], "no_such_profile"),
    (["--profile", "classical_x4", "--set", "crop.size=66"], "multiple of the classical model's scale 4"),
    (["--count", "0"], "--count must be >= 1"),
])
def test_testset_errors_are_one_line(photos, tmp_path, capsys, args, message):
    assert cli("testset", photos, "--out", tmp_path / "o", *LOCAL, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_inspect_degrade_shows_the_stored_pairs(photos, tmp_path):
    assert make_testset(photos, tmp_path / "ts", "--set", "export.folders=false") == 0
    assert not (tmp_path / "ts" / "__supirkit__" / "pairs" / "hq").exists()
    assert cli("inspect", tmp_path / "ts", "--degrade", "--grid", tmp_path / "g.png", "--no-summary") == 0
    assert (tmp_path / "g.png").is_file()
    from supirkit.inspection import iter_samples, make_stored_pair_tiles, open_collection

    tiles = make_stored_pair_tiles(iter_samples(open_collection(tmp_path / "ts"), 3), 128)
    assert len(tiles) == 3 and all(not t.error for t in tiles)
    assert [label.split()[0] for label, _ in tiles[0].images] == ["HQ", "LQ"]
    assert tiles[0].images[0][0] == "HQ 64x64" and tiles[0].images[1][0] == "LQ 16x16"


# ------------------------------------------------------------------------------------------- evaluate
@pytest.fixture()
def restored(photos, tmp_path):
    """A test set and 'restorations' of it: the LQ bicubic-upscaled, one missing, one extra, one wrong size."""
    from PIL import Image

    assert make_testset(photos, tmp_path / "ts") == 0
    pred = tmp_path / "pred"
    pred.mkdir()
    lqs = sorted((tmp_path / "ts" / "__supirkit__" / "pairs" / "lq").iterdir())
    for p in lqs[:2]:
        Image.open(p).resize((64, 64), Image.Resampling.BICUBIC).save(pred / f"{p.stem}_out.png")
    Image.fromarray(photo(9, 60, 64)).save(pred / f"{lqs[2].stem}_out.png")  # wrong size
    Image.fromarray(photo(8, 64, 64)).save(pred / "stranger_out.png")  # no reference
    return tmp_path / "ts", pred, lqs


def test_evaluate_scores_matched_keys_and_states_conventions(restored, tmp_path, capsys):
    import pyarrow.parquet as pq

    from supirkit.metrics import FidelityConvention, psnr

    ts, pred, lqs = restored
    assert cli("evaluate", pred, "--ref", ts, "--out", tmp_path / "ev", "--metrics", "psnr,ssim,musiq",
               "--set", "match.pred_suffix=_out", "--method", "bicubic", *RANDOM_WEIGHTS) == 0
    out = capsys.readouterr().out
    assert "| Method | PSNR↑ | SSIM↑ | MUSIQ↑ |" in out and "| bicubic |" in out
    rows = pq.read_table(tmp_path / "ev" / "per_image.parquet").to_pylist()
    assert [r["key"] for r in rows] == sorted(p.stem for p in lqs)
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["error"].startswith("size_mismatch") and math.isnan(bad[0]["psnr"])
    good = [r for r in rows if not r["error"]]
    expected = psnr(
        read(pred / f"{good[0]['key']}_out.png"),
        read(ts / "__supirkit__" / "pairs" / "hq" / f"{good[0]['key']}.png"),
        FidelityConvention(channel="y"),
    )
    assert good[0]["psnr"] == pytest.approx(expected) and all(np.isfinite(r["musiq"]) for r in good)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["restorations_without_reference"] == ["stranger"] and summary["missing_restorations"] == []
    assert summary["throughput"]["psnr"]["images"] == 2
    md = (tmp_path / "ev" / "summary.md").read_text()
    assert "- PSNR: Y of BT.601 YCbCr (16-235, MATLAB rgb2ycbcr), border 0, not rounded" in md
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "PSNR best #1" in page and "reference (" in page and "restored (" in page
    # another convention, named in the outputs, gives another number
    assert cli("evaluate", pred, "--ref", ts, "--out", tmp_path / "ev2", "--metrics", "psnr", "--convention", "rgb",
               "--crop-border", 4, "--set", "match.pred_suffix=_out", "--set", "match.size_mismatch=resize") == 0
    csv_text = (tmp_path / "ev2" / "summary.csv").read_text()
    assert "RGB, border 4, not rounded" in csv_text and ",3,0," in csv_text  # the resized one is scored too


def test_missing_weights_are_listed_before_any_image_is_read(restored, tmp_path, capsys):
    ts, pred, _ = restored
    code = cli("evaluate", pred, "--ref", ts, "--out", tmp_path / "ev", "--metrics", "psnr,musiq,niqe",
               "--set", "metrics.device=cpu")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("supirkit evaluate: error: weights missing for 2 metric(s)")
    assert lines[1].strip().startswith("musiq:") and lines[2].strip().startswith("niqe:") and len(lines) == 3
    assert not (tmp_path / "ev").exists()  # no work was started


def test_evaluate_without_references_runs_the_no_reference_metrics(restored, tmp_path, capsys):
    _, pred, _ = restored
    assert cli("evaluate", pred, "--out", tmp_path / "ev", "--metrics", "psnr,musiq", *RANDOM_WEIGHTS) == 0
    assert "full-reference metrics were left out: psnr" in capsys.readouterr().out
    lines = (tmp_path / "ev" / "summary.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("musiq,")


def test_evaluate_input_errors_are_one_line(tmp_path, capsys):
    assert cli("evaluate", tmp_path / "nowhere", "--out", tmp_path / "o", "--metrics", "psnr") == 2
    assert cli("evaluate", tmp_path, "--out", tmp_path / "o", "--metrics", "psnr,nope") == 2
    assert cli("evaluate", tmp_path, "--out", tmp_path / "o", "--convention", "matlab") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no such file or folder" in err[0] and "unknown metric 'nope'" in err[1]
    assert "--convention matlab: unknown" in err[2]


# ------------------------------------------------------------------------------------------- end to end
def test_resshift_testset_restored_by_tiny_supir_then_evaluated(photos, tiny_sdxl_dir, adaptor_dir, tmp_path):
    """The issue's acceptance test: a resshift-profile test set from generated photos, restored with the tiny
    SUPIR (x4 back to the HQ size), evaluated: one summary row per metric, one parquet row per image."""
    import pyarrow.parquet as pq

    assert make_testset(photos, tmp_path / "ts", "--count", 2) == 0
    lqs = sorted((tmp_path / "ts" / "__supirkit__" / "pairs" / "lq").iterdir())
    fast = ["sampler.num_steps=2", "image.min_size=64", "image.size_multiple=32", "sampler.restore_cfg=4.0"]
    assert cli("restore", *lqs, "--out", tmp_path / "restored", "--sdxl", tiny_sdxl_dir, "--adaptor", adaptor_dir,
               "--upscale", 4, "--prompt", "a photo", *[x for o in fast for x in ("--set", o)]) == 0
    metrics = ["psnr", "ssim", "lpips", "musiq"]
    assert cli("evaluate", tmp_path / "restored", "--ref", tmp_path / "ts", "--out", tmp_path / "ev",
               "--metrics", ",".join(metrics), *RANDOM_WEIGHTS) == 0
    rows = pq.read_table(tmp_path / "ev" / "per_image.parquet").to_pylist()
    assert len(rows) == 2 and {r["key"] for r in rows} == {p.stem for p in lqs}
    assert all(not r["error"] and r["width"] == 64 for r in rows)
    assert all(np.isfinite(r[m]) for r in rows for m in metrics)
    summary = (tmp_path / "ev" / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == metrics
