"""``supirkit caption`` with the tiny LLaVA loaded through from_pretrained, writing rewritten shards
(``output.write=shards``; the caption tables, the default, are tested in test_caption_tables.py): every
sample captioned, keys and image bytes unchanged, mixed sizes, corrupt samples skipped with a reason,
kill-and-resume, Ray actors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from caption_fixtures import FAST_CAPTION, caption_argv, make_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
FAST = [*FAST_CAPTION, "--set", "output.write=shards"]  # this file tests the rewritten shards


def _argv(shards, out, tiny_models, *extra):
    return caption_argv(shards, out, tiny_models, *extra, fast=FAST)


def _samples(folder):
    from supirkit.datapipe.tario import list_shards, read_shard

    return {s["__key__"]: s for url in list_shards(str(folder)) for s in read_shard(url)}


def _run(argv):
    from supirkit.cli import main

    return main(argv)


def test_every_sample_captioned_keys_and_bytes_unchanged(tmp_path, tiny_models):
    import pyarrow.parquet as pq

    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=5, with_txt=True)  # 5 sizes per batch of 4
    assert _run(_argv(shards, tmp_path / "out", tiny_models)) == 0
    before, after = _samples(shards), _samples(tmp_path / "out")
    assert after.keys() == before.keys() and len(after) == 10
    for key, src in before.items():
        out = after[key]
        image_ext = "jpg" if "jpg" in src else "png"
        assert out[image_ext] == src[image_ext]  # image bytes untouched
        assert {k for k in out if not k.startswith("__")} == {image_ext, "json", "txt"}
        meta_in, meta = json.loads(src["json"]), json.loads(out["json"])
        assert {k: meta[k] for k in meta_in} == meta_in  # earlier metadata kept as it was
        cap = meta["caption"]
        assert out["txt"].decode() == cap["text"] and cap["text"].strip()
        assert meta["previous_txt"] == src["txt"].decode()
        assert cap["model"] == str(tiny_models["llava"]) and cap["backend"] == "transformers"
        assert cap["prompt"] == "Describe this image and its style in a very detailed manner."
        assert cap["chat_prompt"].endswith(
            "USER: <image>\nDescribe this image and its style in a very detailed manner. ASSISTANT:"
        )
        assert cap["generation"] == {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "num_beams": 1,
                                     "max_new_tokens": 8, "min_new_tokens": 0, "repetition_penalty": 1.0, "seed": 0}
        assert 1 <= cap["new_tokens"] <= 8 and cap["raw"]
        assert cap["clip_tokens"] > 0 and cap["clip_tokens_method"] in ("clip", "estimate")
        assert cap["image"] == "curated" and cap["fit"] == "pad"
        w, h = meta["width"], meta["height"]
        assert cap["image_size"] == [max(w, h)] * 2  # padded to a square, not cropped
    table = pq.read_table(tmp_path / "out" / "__supirkit__" / "index" / "shard-000000.parquet").to_pylist()
    assert len(table) == 5 and all(r["has_caption"] for r in table)
    for row in table:
        # the caption metadata is a struct column (nested fields, real types), not flattened text
        assert row["caption"]["text"] == json.loads(after[row["key"]]["json"])["caption"]["text"]
        assert row["caption"]["generation"]["temperature"] == 0.2 and row["caption"]["clip_tokens"] > 0
    summary = json.loads((tmp_path / "out" / "__supirkit__" / "summary.json").read_text())
    assert summary["samples"] == 10 and summary["caption"]["captions"] == 10
    assert summary["caption"]["new_tokens"] == sum(
        json.loads(s["json"])["caption"]["new_tokens"] for s in after.values()
    )


def test_corrupt_samples_are_skipped_with_a_reason(tmp_path, tiny_models):
    from supirkit.datapipe.runner import iter_rejections

    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=3, corrupt=True)
    assert _run(_argv(shards, tmp_path / "drop", tiny_models)) == 0
    out = _samples(tmp_path / "drop")
    assert len(out) == 3 and "badbytes0000" not in out and "noimage00000" not in out
    reasons = {r["source"].rsplit("#", 1)[1]: r["reason"] for r in iter_rejections(tmp_path / "drop", "shard")}
    assert reasons == {"badbytes0000": "not_an_image", "noimage00000": "no_image_in_sample"}
    # keep: written uncaptioned, with the reason in the json
    assert _run(_argv(shards, tmp_path / "keep", tiny_models, "--set", "caption.on_failure=keep")) == 0
    kept = _samples(tmp_path / "keep")
    assert len(kept) == 5 and "txt" not in kept["badbytes0000"]
    assert json.loads(kept["badbytes0000"]["json"])["caption"]["error"] == "not_an_image"
    assert kept["badbytes0000"]["jpg"] == b"this is not a jpeg at all"


def test_a_failing_generation_costs_only_its_sample(tmp_path, tiny_models):
    """The whole batch fails when one image is bad for the model; it is retried one image at a time."""
    from supirkit.captioning.backends import TransformersCaptioner
    from supirkit.captioning.config import CaptionConfig
    from supirkit.captioning.job import run_caption_job
    from supirkit.datapipe.config import load_config
    from supirkit.datapipe.runner import iter_rejections

    class Picky(TransformersCaptioner):
        def caption(self, images, seed, timer=None):
            if any(im.size == (90, 90) for im in images):  # the 30x90 sample, padded
                raise RuntimeError("CUDA error: device-side assert (simulated)")
            return super().caption(images, seed, timer)

    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=5)
    cfg = load_config(CaptionConfig, "caption/demo.yaml",
                      [f"model.name={tiny_models['llava']}", "runner.executor=local", "generation.max_new_tokens=4",
                       "output.write=shards"])
    job = run_caption_job([str(shards)], tmp_path / "out", cfg,
                          backend_factory=lambda: Picky(cfg.model, cfg.prompt, cfg.generation))
    assert job.ok and job.summary["captions"] == 4
    rejections = list(iter_rejections(tmp_path / "out", "shard"))
    assert [r["reason"] for r in rejections] == ["caption_failed"]
    assert "simulated" in rejections[0]["detail"]
    stats = json.loads((tmp_path / "out" / "__supirkit__" / "stats" / "shard-000000.json").read_text())
    assert stats["counts"]["batch_retries"] == 1
    assert {"generate", "decode", "write", "load_model"} <= set(stats["timings_s"])


def test_source_images_and_fit_modes(tmp_path, tiny_models):
    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=4)
    assert _run(_argv(shards, tmp_path / "src", tiny_models, "--source", "original",
                      "--set", "image.max_side=100")) == 0
    assert _run(_argv(shards, tmp_path / "crop", tiny_models, "--set", "image.fit=crop")) == 0
    before = _samples(shards)
    for key, s in _samples(tmp_path / "src").items():
        meta = json.loads(s["json"])
        w, h = meta["width"], meta["height"]
        side = min(100, 2 * max(w, h))  # the original is twice the curated size, then limited to 100
        assert meta["caption"]["image"] == "source" and meta["caption"]["image_size"] == [side, side]
        assert s.get("jpg", s.get("png")) == before[key].get("jpg", before[key].get("png"))
    for s in _samples(tmp_path / "crop").values():
        meta = json.loads(s["json"])
        assert meta["caption"]["image_size"] == [min(meta["width"], meta["height"])] * 2


def test_resume_after_kill_redoes_only_unfinished_shards(tmp_path, tiny_models):
    shards = make_shards(tmp_path / "in", n_shards=3, per_shard=2)
    out = tmp_path / "out"
    env = dict(os.environ, SUPIRKIT_FAULT="caption_mid_shard:1")  # shard 0 done, killed inside shard 1
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", *_argv(shards, out, tiny_models)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    done = sorted(p.name for p in (out / "__supirkit__" / "stats").glob("shard-*.json"))
    assert done == ["shard-000000.json"]
    assert list(out.glob(".tmp-*"))  # the killed shard's half-written tar
    first_mtime = (out / "__supirkit__" / "stats" / "shard-000000.json").stat().st_mtime_ns
    first_tar = (out / "shard-000000.tar").read_bytes()

    # execution-only settings may change on resume (here: no prefetch thread)
    assert _run(_argv(shards, out, tiny_models, "--set", "caption.prefetch_batches=0")) == 0
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert summary["skipped_done"] == 1 and summary["samples"] == 6
    assert (out / "__supirkit__" / "stats" / "shard-000000.json").stat().st_mtime_ns == first_mtime  # not redone
    assert (out / "shard-000000.tar").read_bytes() == first_tar
    assert not list(out.glob(".tmp-*"))
    assert _samples(out).keys() == _samples(shards).keys()
    # seeds are per shard and batch: a resumed job writes the same captions as an uninterrupted one
    assert _run(_argv(shards, tmp_path / "straight", tiny_models)) == 0
    assert {k: s["txt"] for k, s in _samples(out).items()} == {
        k: s["txt"] for k, s in _samples(tmp_path / "straight").items()
    }
    # a changed config is refused on resume instead of mixing two configs' captions
    assert _run(_argv(shards, out, tiny_models, "--set", "generation.temperature=0.5")) == 2


def test_llava_next_checkpoint_with_anyres_and_mixed_sizes(tmp_path):
    """A LLaVA-NeXT folder is loaded with the class its config names; unpadded mixed sizes tile differently."""
    from supirkit.tiny.llava import build_tiny_llava_next

    model = build_tiny_llava_next(tmp_path / "next")
    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=4)
    argv = ["caption", str(shards), "--out", str(tmp_path / "out"), "--model", str(model), "--config",
            "caption/demo.yaml", *FAST, "--set", "image.fit=none"]
    assert _run(argv) == 0
    out = _samples(tmp_path / "out")
    assert out.keys() == _samples(shards).keys()
    sizes = set()
    for s in out.values():
        meta = json.loads(s["json"])
        assert meta["caption"]["text"] and meta["caption"]["fit"] == "none"
        assert meta["caption"]["image_size"] == [meta["width"], meta["height"]]
        sizes.add(tuple(meta["caption"]["image_size"]))
    assert len(sizes) == 4


def test_cli_reports_a_bad_model_in_one_line(tmp_path, tiny_models, capsys):
    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=1)
    code = _run(["caption", str(shards), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "missing"),
                 "--config", "caption/demo.yaml", "--set", "runner.executor=local"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be loaded" in err and len(err.strip().splitlines()) == 1
    code = _run(["caption", str(shards), "--out", str(tmp_path / "o2"), "--model", str(tiny_models["sdxl"] / "unet"),
                 "--config", "caption/demo.yaml", "--set", "runner.executor=local"])
    assert code == 2


def test_gpu_only_options_fail_in_one_line_before_any_shard(tmp_path, tiny_models, capsys):
    """vLLM and 8/4-bit loading run on a CUDA GPU only: refused up front with the reason, not as a failed
    shard per worker followed by the advice to rerun."""
    import importlib.util

    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=1)
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    cases = [
        (["--set", "model.backend=vllm", "--set", "model.device=cpu"],
         "runs on a CUDA GPU only" if has_vllm else "needs the vllm package"),
        (["--set", "model.backend=vllm", "--set", "model.quantization=8bit"],
         "4-bit only" if has_vllm else "needs the vllm package"),
        (["--set", "model.quantization=8bit", "--set", "model.device=cpu"],
         "runs on a CUDA GPU only, but model.device is cpu" if has_bnb else "needs the bitsandbytes package"),
        (["--set", "model.quantization=4bit", "--set", "model.device=auto", "--set", "runner.executor=ray",
          "--set", "runner.num_gpus_per_actor=0"],
         "runner.num_gpus_per_actor is 0" if has_bnb else "needs the bitsandbytes package"),
    ]
    import torch

    if has_bnb and not torch.cuda.is_available():  # device auto on a machine without a GPU
        cases.append((["--set", "model.quantization=8bit", "--set", "model.device=auto"], "none is visible here"))
    for i, (extra, needle) in enumerate(cases):
        out = tmp_path / f"o{i}"
        code = _run(_argv(shards, out, tiny_models, *extra))
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, (extra, err)
        assert not out.exists()  # nothing was started


@pytest.mark.ray
def test_caption_through_ray_actors(tmp_path, tiny_models, ray_address):
    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=3)
    argv = _argv(shards, tmp_path / "out", tiny_models, "--set", "runner.executor=ray",
                 "--set", "runner.num_gpus_per_actor=0", "--set", "runner.num_actors=1",
                 "--set", "runner.num_cpus_per_task=0.5")
    assert _run(argv) == 0
    out = _samples(tmp_path / "out")
    assert out.keys() == _samples(shards).keys()
    assert all(json.loads(s["json"])["caption"]["text"] for s in out.values())
    stats = [
        json.loads(p.read_text()) for p in sorted(((tmp_path / "out") / "__supirkit__" / "stats").glob("shard-*.json"))
    ]
    # one actor, one model replica: loaded once, reported on the first shard it captioned only
    assert sum("load_model" in s["timings_s"] for s in stats) == 1


@pytest.mark.ray
def test_demo_step_captions_the_curate_steps_shards(tmp_path, tiny_models, ray_address):
    from supirkit.demo import DemoContext
    from supirkit.demo.caption import step

    shards = make_shards(tmp_path / "curated_elsewhere", n_shards=1, per_shard=3)
    ctx = DemoContext(out=tmp_path / "demo", samples=tmp_path / "no-samples", models=dict(tiny_models))
    ctx.outputs["curate"] = {"shards": str(shards)}
    result = step(ctx)
    assert result["input"] == str(shards) and result["captions"] == 3 and result["skipped"] == 0
    # a caption set: the images stay in the input shards, the captions are joined by key
    from supirkit.datapipe.captions import CaptionSet

    captions = CaptionSet.open(result["shards"])
    assert captions is not None and captions.done_units() == [0]
    joined = captions.captions(0)
    assert joined.keys() == _samples(shards).keys() and all(c["txt"].strip() for c in joined.values())
    assert not list(Path(result["shards"]).glob("*.tar"))  # no copy of the corpus
    assert result["token_count"] == "clip"  # counted with the tiny SDXL's own CLIP tokenizer


def test_photos_of_any_source_become_captioned_shards(tmp_path, tiny_models):
    """Caption takes the sources ``shard`` takes: a folder of photos (one named without an extension, one
    corrupt, one named in capitals) becomes shards of the photos, bytes unchanged under their content keys, each
    with its caption; the corrupt file is an input rejected with a reason, and a rerun resumes with nothing to do."""
    from caption_fixtures import SIZES, encode

    from supirkit.datapipe.keys import content_key
    from supirkit.datapipe.runner import iter_rejections

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    originals = {}
    for i, (w, h) in enumerate(SIZES[:4]):
        data = encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "PNG" if i % 2 else "JPEG")
        name = f"p{i}.{'png' if i % 2 else 'jpg'}" if i else "P0.JPEG"
        (photos / name).write_bytes(data)
        originals[content_key(data)] = data
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    argv = caption_argv(photos, out, tiny_models)  # the default write=table: photos go to new shards anyway
    assert _run(argv) == 0
    samples = _samples(out)
    assert set(samples) == set(originals)
    for key, s in samples.items():
        image = [v for k, v in s.items() if k in ("jpg", "png")]
        assert image == [originals[key]]
        meta = json.loads(s["json"])
        assert meta["source"].startswith(str(photos)) and meta["caption"]["model"] == str(tiny_models["llava"])
        assert s["txt"].decode().strip()
    assert [(r["source"], r["reason"]) for r in iter_rejections(out, "shard")] == [
        (str(photos / "broken.jpg"), "corrupt_header")]
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert summary["inputs"] == 5 and summary["samples"] == 4
    assert _run(argv) == 0  # resumed: nothing left to do
    assert set(_samples(out)) == set(originals)
