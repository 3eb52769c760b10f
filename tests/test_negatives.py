"""supirkit negatives: SDXL negative-quality samples with the tiny SDXL loaded through from_pretrained."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_sdxl_dir  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parents[1]
PAPER = "oil painting, cartoon, blurring, dirty, messy, low quality, frames, deformed, lowres, over-smooth"
# 64 px, one denoising step, 3 samples per shard, batches of 2 (a partial last batch and a partial last shard)
FAST = ["--config", "negatives/demo.yaml", "--set", "runner.executor=local", "--set", "runner.progress=none",
        "--set", "output.samples_per_shard=3", "--set", "generate.batch_size=2", "--set", "generate.steps=2"]
REQUIRED = {"key", "index", "source", "source_key", "orig_width", "orig_height", "prompt", "seed", "strength",
            "steps", "guidance", "quality", "subset", "mode", "model", "encoded"}


def _png(rng, h, w) -> bytes:
    from supirkit.datapipe.decode import encode_image

    return encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "png", 1)


def _write_shard(folder: Path, index: int, images: list[bytes]) -> list[str]:
    from supirkit.datapipe.keys import content_key
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    sink = ShardSink(folder, "shard", index)
    keys = []
    for data in images:
        key = content_key(data)
        sink.write({"__key__": key, "png": data, "json": {"key": key}})
        keys.append(key)
    sink.commit(UnitStats())
    return keys


@pytest.fixture(scope="module")
def input_shards(tmp_path_factory):
    """Two curated-like input shards (5 and 3 images of several sizes and aspect ratios)."""
    folder = tmp_path_factory.mktemp("neg_in")
    rng = np.random.default_rng(7)
    sizes = [(40, 56), (72, 48), (64, 64), (50, 90), (80, 80), (64, 96), (48, 48), (96, 64)]
    keys = _write_shard(folder, 0, [_png(rng, h, w) for h, w in sizes[:5]])
    keys += _write_shard(folder, 1, [_png(rng, h, w) for h, w in sizes[5:]])
    return folder, set(keys)


def _cli(*argv) -> int:
    from supirkit.cli import main

    return main([str(a) for a in argv])


def _samples(out: Path) -> dict[str, dict]:
    from supirkit.datapipe.tario import list_shards, read_shard

    found = {}
    for url in list_shards(out):
        for s in read_shard(url):
            assert s["__key__"] not in found
            found[s["__key__"]] = s
    return found


def _tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("negatives-*.tar"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, input_shards, tiny_sdxl_dir):
    folder, _ = input_shards
    out = tmp_path_factory.mktemp("neg_ref") / "out"
    assert _cli("negatives", folder, "--out", out, "--count", 7, "--model", tiny_sdxl_dir, *FAST) == 0
    return out


def test_img2img_makes_the_requested_count_with_complete_metadata(reference, input_shards, tiny_sdxl_dir):
    from PIL import Image

    from supirkit.negatives.job import sample_key

    _, input_keys = input_shards
    samples = _samples(reference)
    assert sorted(samples) == [sample_key(0, i) for i in range(7)]
    assert len(list(reference.glob("negatives-*.tar"))) == 3  # 3 + 3 + 1
    seeds = set()
    for key, s in samples.items():
        meta = json.loads(s["json"])
        assert REQUIRED <= set(meta), REQUIRED - set(meta)
        assert meta["quality"] == "negative" and meta["subset"] == "negatives" and meta["mode"] == "img2img"
        assert meta["prompt"] == PAPER and s["txt"].decode() == PAPER
        assert meta["strength"] == 0.5 and meta["steps"] == 2 and meta["denoising_steps"] == 1
        assert meta["guidance"] == 5.0 and meta["model"] == str(tiny_sdxl_dir) and meta["encoded"] == "png"
        assert meta["source_key"] in input_keys
        assert meta["source"].endswith(f".tar#{meta['source_key']}")
        x, y, w, h = meta["source_crop"]  # cut to the square output aspect inside the source image
        assert w == h == min(meta["source_width"], meta["source_height"])
        assert 0 <= x <= meta["source_width"] - w and 0 <= y <= meta["source_height"] - h
        img = Image.open(io.BytesIO(s["png"]))
        assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
        assert (meta["orig_width"], meta["orig_height"]) == (64, 64)
        assert np.asarray(img).std() > 0
        seeds.add(meta["seed"])
    assert len(seeds) == 7
    # the parquet index and the stats carry the samples, and the pipeline time is measured
    import pyarrow.parquet as pq

    table = pq.read_table(reference / "__supirkit__" / "index" / "negatives-000000.parquet")
    assert set(table.column("quality").to_pylist()) == {"negative"} and table.num_rows == 3
    stats = json.loads((reference / "__supirkit__" / "stats" / "negatives-000000.json").read_text())
    assert stats["counts"]["samples"] == 3 and stats["timings_s"]["pipeline"] > 0
    assert json.loads((reference / "__supirkit__" / "summary.json").read_text())["samples"] == 7


def test_same_config_gives_identical_bytes_and_the_seed_matters(reference, input_shards, tiny_sdxl_dir, tmp_path):
    folder, _ = input_shards
    again = tmp_path / "again"
    assert _cli("negatives", folder, "--out", again, "--count", 7, "--model", tiny_sdxl_dir, *FAST) == 0
    assert _tar_bytes(again) == _tar_bytes(reference)
    other = tmp_path / "seed1"
    assert _cli("negatives", folder, "--out", other, "--count", 1, "--model", tiny_sdxl_dir, *FAST,
                "--set", "generate.seed=1") == 0
    (key, s), = _samples(other).items()
    assert key == "neg-1-000000000"
    assert s["png"] != _samples(reference)["neg-0-000000000"]["png"]


class _DriverKilled(BaseException):
    """Stands for the SIGKILL of an in-process driver: passes through every ``except Exception``."""


def test_kill_and_resume_gives_the_uninterrupted_set(reference, input_shards, tiny_sdxl_dir, tmp_path,
                                                      monkeypatch):
    from supirkit.datapipe import faults

    folder, _ = input_shards
    out = tmp_path / "killed"
    args = ["negatives", folder, "--out", out, "--count", 7, "--model", tiny_sdxl_dir, *FAST]
    # 1. a real SIGKILL of a worker between shard 1's tar rename and its stats (the done marker)
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, SUPIRKIT_FAULT="after_tar_rename:1"), cwd=ROOT, timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
    assert (out / "__supirkit__" / "stats" / "negatives-000000.json").is_file() and (
        out / "negatives-000001.tar"
    ).is_file()
    assert not (out / "__supirkit__" / "stats" / "negatives-000001.json").exists()

    # 2. the driver dies once one shard is complete (in-process stand-in for a kill at after_shards:1)
    def die(point, index=None):
        if faults.armed(point, index):
            raise _DriverKilled(point)

    monkeypatch.setattr(faults, "maybe_fail", die)
    monkeypatch.setenv("SUPIRKIT_FAULT", "after_shards:1")
    with pytest.raises(_DriverKilled):
        _cli(*args)
    assert (out / "__supirkit__" / "stats" / "negatives-000001.json").is_file() and not (
        out / "negatives-000002.tar"
    ).exists()
    # 3. the rerun finishes the job: the same shards, byte for byte, as the uninterrupted run
    monkeypatch.delenv("SUPIRKIT_FAULT")
    assert _cli(*args) == 0
    assert _tar_bytes(out) == _tar_bytes(reference)
    assert json.loads((out / "__supirkit__" / "summary.json").read_text())["samples"] == 7
    assert not list(out.glob(".tmp-*"))


def test_txt2img_with_word_prompts(tiny_sdxl_dir, tmp_path):
    from supirkit.negatives.config import NEGATIVE_WORDS, NegativesPromptConfig
    from supirkit.negatives.job import PromptSampler, sample_seed

    out = tmp_path / "t2i"
    assert _cli("negatives", "--out", out, "--count", 3, "--model", tiny_sdxl_dir, *FAST,
                "--set", "generate.mode=txt2img", "--set", "prompts.mode=words", "--set", "output.codec=jpg") == 0
    samples = _samples(out)
    assert len(samples) == 3
    sampler = PromptSampler(NegativesPromptConfig(mode="words"))
    prompts = set()
    for s in samples.values():
        meta = json.loads(s["json"])
        assert meta["mode"] == "txt2img" and meta["quality"] == "negative"
        assert meta["source_key"] is None and meta["strength"] is None and meta["denoising_steps"] == 2
        assert meta["encoded"] == "jpg" and meta["jpeg_quality"] == 95 and s["jpg"][:3] == b"\xff\xd8\xff"
        words = meta["prompt"].split(", ")
        assert 4 <= len(words) <= 10 and set(words) <= set(NEGATIVE_WORDS)
        assert s["txt"].decode() == meta["prompt"] == sampler.prompt(sample_seed(0, meta["index"]))
        assert meta["seed"] == sample_seed(0, meta["index"])
        prompts.add(meta["prompt"])
    assert len(prompts) > 1


def test_unreadable_source_is_recorded_and_replaced(tiny_sdxl_dir, tmp_path):
    rng = np.random.default_rng(3)
    keys = _write_shard(tmp_path / "in", 0, [_png(rng, 48, 48), b"this is not an image", _png(rng, 40, 64)])
    out = tmp_path / "out"
    assert _cli("negatives", tmp_path / "in", "--out", out, "--count", 3, "--model", tiny_sdxl_dir, *FAST) == 0
    used = [json.loads(s["json"])["source_key"] for s in _samples(out).values()]
    assert len(used) == 3 and keys[1] not in used and set(used) == {keys[0], keys[2]}
    stats = json.loads((out / "__supirkit__" / "stats" / "negatives-000000.json").read_text())
    assert stats["rejected"] == {"not_an_image": 1}
    assert stats["rejections"][0]["source"].endswith(f"#{keys[1]}")


def test_bad_config_is_one_line(tmp_path, capsys):
    from supirkit.datapipe.config import ConfigError, load_config
    from supirkit.negatives.config import NegativesConfig

    cases = [
        (["--set", "generate.strength=1.5"], "generate.strength"),
        (["--set", "prompts.lists=[a]"], "did you mean 'list'"),
        (["--set", "output.codec=gif"], "output.codec"),
        (["--count", "0"], "generate.count"),
        (["--model", str(tmp_path / "no-such-folder")], "model.id"),
    ]
    for extra, needle in cases:
        code = _cli("negatives", tmp_path, "--out", tmp_path / "o", *FAST, *extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and needle in err, (extra, err)
    assert not (tmp_path / "o").exists()
    assert _cli("negatives", "--out", tmp_path / "o", *FAST) == 2  # img2img needs SRC
    assert "txt2img" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="words_min .* larger than words_max"):
        load_config(NegativesConfig, "negatives/default.yaml", ["prompts.words_min=5", "prompts.words_max=4"])
    load_config(NegativesConfig, "negatives/default.yaml")  # the shipped configs validate
    cfg = load_config(NegativesConfig, "negatives/demo.yaml")
    assert (cfg.generate.width, cfg.runner.num_gpus_per_actor) == (64, 0)


def test_a_prompt_list_is_sampled_per_sample_and_the_count_spread_over_shards():
    from supirkit.negatives.config import NegativesPromptConfig
    from supirkit.negatives.job import PromptSampler, n_partitions, partition_range, sample_seed

    prompts = ["oil painting, cartoon", "blurring, dirty, messy", "lowres, over-smooth"]
    sampler = PromptSampler(NegativesPromptConfig(list=prompts))
    chosen = [sampler.prompt(sample_seed(0, i)) for i in range(300)]
    assert chosen == [sampler.prompt(sample_seed(0, i)) for i in range(300)]  # a pure function of the seed
    counts = {p: chosen.count(p) for p in prompts}
    assert set(chosen) == set(prompts) and min(counts.values()) > 60, counts  # about 100 each
    # 100,000 samples at 1000 per shard: 100 shards, each a contiguous index range, together every index once
    n = n_partitions(100_000, 1000)
    ranges = [partition_range(j, 1000, 100_000) for j in range(n)]
    assert n == 100 and all(len(r) == 1000 for r in ranges)
    assert [i for r in ranges for i in r] == list(range(100_000))
    assert n_partitions(7, 3) == 3 and list(partition_range(2, 3, 7)) == [6]


def test_source_rule_is_deterministic_and_takes_fresh_members():
    from supirkit.negatives.sources import SourcePlan

    plan = SourcePlan(n_inputs=3, job_seed=5, samples_per_shard=4, shards_per_partition=1)
    assert [p.__dict__ for p in plan.picks(2, 4)] == [p.__dict__ for p in SourcePlan(3, 5, 4, 1).picks(2, 4)]
    first = [plan.picks(j, 4) for j in range(6)]
    # every input shard is used once per round, with fresh member positions in the next round
    assert sorted(ps[0].input for ps in first[:3]) == [0, 1, 2]
    for j in range(3):
        assert {p.input for p in first[j]} == {first[j][0].input}
        assert [p.position for p in first[j]] == [0, 1, 2, 3]
        assert first[j + 3][0].input == first[j][0].input
        assert [p.position for p in first[j + 3]] == [4, 5, 6, 7]
    # several input shards per output shard: samples alternate between slots
    plan2 = SourcePlan(n_inputs=10, job_seed=5, samples_per_shard=6, shards_per_partition=2)
    picks = plan2.picks(0, 6)
    assert picks[0].input != picks[1].input and {p.input for p in picks[::2]} == {picks[0].input}
    assert [p.position for p in picks] == [0, 0, 1, 1, 2, 2]
    # the shard order and the member order depend on the seed
    orders = {tuple(p[0].input for p in (SourcePlan(50, s, 1, 1).picks(j, 1) for j in range(50))) for s in (0, 1)}
    assert len(orders) == 2 and all(sorted(o) == list(range(50)) for o in orders)
    assert list(plan.member_order(0, 20)) != list(SourcePlan(3, 6, 4, 1).member_order(0, 20))


@pytest.mark.ray
def test_demo_step_on_ray(ray_address, tiny_sdxl_dir, tmp_path):
    from supirkit.demo import DemoContext
    from supirkit.demo.negatives import step
    from supirkit.demo.samples import make_sample_folder

    ctx = DemoContext(out=tmp_path, samples=tmp_path / "samples", models={"sdxl": tiny_sdxl_dir})
    make_sample_folder(ctx.samples, size=64, n_good=5)
    result = step(ctx)
    assert result["samples"] == 8 and result["mode"] == "img2img"
    samples = _samples(Path(result["shards"]))
    assert len(samples) == 8
    assert {json.loads(s["json"])["quality"] for s in samples.values()} == {"negative"}


def test_img2img_takes_a_folder_of_photos_like_every_stage(tiny_sdxl_dir, tmp_path):
    """Any source ``shard`` takes works: a plain folder of photos is listed and planned into file groups,
    and each sample's source is the photo it was made from."""
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    names = []
    for i, (h, w) in enumerate([(40, 56), (72, 48), (64, 64), (50, 90)]):
        name = f"sub/p{i}.png" if i % 2 else f"p{i}.png"
        (photos / name).write_bytes(_png(rng, h, w))
        names.append(str(photos / name))
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "neg"
    assert _cli("negatives", photos, "--out", out, "--count", 4, "--model", tiny_sdxl_dir, *FAST) == 0
    samples = _samples(out)
    assert len(samples) == 4
    sources = {json.loads(s["json"])["source"] for s in samples.values()}
    assert sources and sources <= set(names)
    inputs = json.loads((out / "__supirkit__" / "work" / "inputs.json").read_text())
    assert inputs["shards"] == ["files:0"]
    again = tmp_path / "again"  # the same folder gives the same samples
    assert _cli("negatives", photos, "--out", again, "--count", 4, "--model", tiny_sdxl_dir, *FAST) == 0
    assert _tar_bytes(again) == _tar_bytes(out)


def test_progress_counts_denoising_steps_before_any_sample_is_out(input_shards, tiny_sdxl_dir, tmp_path, capsys,
                                                                   monkeypatch):
    """Generative stages show per-step progress: the log lines count the model steps as they run."""
    from supirkit.datapipe import progress

    monkeypatch.setattr(progress, "SEND_EVERY_S", 0.0)  # every report goes out at once (in-process run)
    folder, _ = input_shards
    assert _cli("negatives", folder, "--out", tmp_path / "o", "--count", 2, "--model", tiny_sdxl_dir, *FAST,
                "--set", "runner.progress=log", "--set", "runner.log_every_s=0.001") == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[negatives]")]
    assert lines and "model steps at" in lines[-1] and "2 samples" in lines[-1], lines
    assert any(" 0 samples" in x and "model steps" in x for x in lines), lines  # steps move first
