"""Training data stream, configs, checkpoint bookkeeping and the launcher command (no model, no training).

The stream is a pure function of (seed, rank, micro-batch): these tests pin that down (same batches on a
restart, with or without loader workers), plus the rank split, the mixture rates, caption dropout, the prompt
rule and the micro-conditioning."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import data_section, write_shard_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    hq = write_shard_set(root / "hq", "hq", 4, 6, seed=1, caption="a photo of a cat")
    faces = write_shard_set(root / "faces", "fc", 2, 3, seed=2, caption="a face")
    neg = write_shard_set(root / "neg", "ng", 1, 5, seed=3, caption="oil painting, blurry")
    return {"root": root, "hq": (root / "hq", hq), "faces": (root / "faces", faces), "neg": (root / "neg", neg)}


def _mixture(sets, hq=0.8, faces=0.1, neg=0.1):
    return [{"name": "hq", "shards": str(sets["hq"][0]), "weight": hq},
            {"name": "faces", "shards": str(sets["faces"][0]), "weight": faces},
            {"name": "negatives", "shards": str(sets["neg"][0]), "weight": neg, "prompt": "caption"}]


def _stream(sets, rank=0, world=1, start=0, batch=2, **over):
    from supirkit.train.data import MixtureStream

    return MixtureStream(data_section(_mixture(sets), **over), seed=5, rank=rank, world=world, batch_size=batch,
                         start_micro_batch=start)


def _same(a: dict, b: dict) -> None:
    assert a["key"] == b["key"] and a["prompt"] == b["prompt"]
    assert a["micro_batch"] == b["micro_batch"]
    assert np.array_equal(a["hq"].numpy(), b["hq"].numpy())
    assert np.array_equal(a["lq"].numpy(), b["lq"].numpy())
    assert np.array_equal(a["time_ids"].numpy(), b["time_ids"].numpy())


def test_shipped_configs_validate():
    from supirkit.train.config import load_train_config

    for name in ("supir", "encoder", "demo"):
        cfg = load_train_config(str(ROOT / "configs" / "train" / f"{name}.yaml"))
        assert cfg.schedule.max_steps >= 1
    supir = load_train_config(str(ROOT / "configs" / "train" / "supir.yaml"))
    assert supir.optim.lr == 1e-5 and supir.data.crop.size == 512 and supir.stage == "adaptor"
    assert [m.name for m in supir.data.mixture] == ["hq", "faces", "negatives"]
    assert load_train_config(str(ROOT / "configs" / "train" / "encoder.yaml")).stage == "encoder"


def test_bad_config_is_one_line_error(tmp_path):
    from supirkit.datapipe.config import ConfigError
    from supirkit.train.config import load_train_config

    with pytest.raises(ConfigError) as err:
        load_train_config(str(ROOT / "configs" / "train" / "demo.yaml"), ["data.crop.size=60"])
    assert "multiple of 8" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        load_train_config(str(ROOT / "configs" / "train" / "demo.yaml"), ["schedule.timestep_range=[5,1]"])


def test_stream_is_a_function_of_seed_rank_and_step(sets):
    a = _stream(sets)
    batches = [a.micro_batch(m) for m in range(5)]
    assert [b["micro_batch"] for b in batches] == list(range(5))
    assert batches[0]["hq"].shape == (2, 3, 64, 64) and batches[0]["hq"].dtype.is_floating_point is False
    # a restart at micro-batch 3 (a resumed run) sees exactly the batches 3 and 4
    b = _stream(sets, start=3)
    it = iter(b)
    _same(next(it), batches[3])
    _same(next(it), batches[4])
    # another seed draws other samples
    from supirkit.train.data import MixtureStream

    other = MixtureStream(a.data, seed=6, rank=0, world=1, batch_size=2)
    assert [other.plan(i) for i in range(8)] != [a.plan(i) for i in range(8)]


def test_loader_workers_keep_the_order(sets):
    from supirkit.train.data import build_loader

    plain = [b for b, _ in zip(iter(_stream(sets, start=2)), range(4))]
    loader = build_loader(_stream(sets, start=2), num_workers=2, prefetch_factor=1)
    got = []
    for b in loader:
        got.append(b)
        if len(got) == 4:
            break
    assert len(got) == len(plain) == 4
    for x, y in zip(got, plain):
        _same(x, y)


def test_ranks_draw_from_their_own_shards(sets):
    r0, r1 = _stream(sets, rank=0, world=2), _stream(sets, rank=1, world=2)
    for v0, v1 in zip(r0.views, r1.views):
        if v0.mode == "shards":
            assert set(v0.shards.tolist()).isdisjoint(v1.shards.tolist())
    # the negatives set has one shard for two ranks: it is split by rows, still disjoint
    neg = r0.member_names().index("negatives")
    assert r0.views[neg].mode == "rows"
    rows = lambda s: {s.views[neg].locate(j) for j in range(s.views[neg].count)}  # noqa: E731
    assert rows(r0).isdisjoint(rows(r1)) and len(rows(r0) | rows(r1)) == 5
    k0 = {k for m in range(4) for k in r0.micro_batch(m)["key"]}
    k1 = {k for m in range(4) for k in r1.micro_batch(m)["key"]}
    assert k0.isdisjoint(k1)


def test_mixture_rates(sets):
    """Faces and negatives appear at their configured rates (per rank and overall)."""
    for rank, world in ((0, 1), (1, 2)):
        s = _stream(sets, rank=rank, world=world)
        n = 4000
        members = np.array([s.plan(i).member for i in range(n)])
        rates = np.bincount(members, minlength=3) / n
        assert np.allclose(rates, [0.8, 0.1, 0.1], atol=0.025), rates
    # the batches carry the member of every sample, as planned
    s = _stream(sets, batch=4)
    batch = s.micro_batch(7)
    assert batch["member"].tolist() == [s.plan(28 + k).member for k in range(4)]
    heavy = [{"name": "hq", "shards": str(sets["hq"][0]), "weight": 1},
             {"name": "negatives", "shards": str(sets["neg"][0]), "weight": 3, "prompt": "caption"}]
    from supirkit.train.data import MixtureStream

    s3 = MixtureStream(data_section(heavy), seed=5, batch_size=1)
    rate = np.mean([s3.plan(i).member == 1 for i in range(4000)])
    assert abs(rate - 0.75) < 0.025


def test_prompt_rule_and_caption_dropout(sets):
    from supirkit.train.data import PromptRule

    rule = PromptRule(positive="sharp, detailed", separator=" | ")
    s = _stream(sets, caption_drop_prob=0.3)
    s.prompt_rule = rule
    prompts = {}
    drops = 0
    for i in range(60):
        sample = s.sample(i)
        member = s.member_names()[sample["member"]]
        if sample["prompt"] == "":
            drops += 1
            continue
        prompts.setdefault(member, set()).add(sample["prompt"])
        if member == "negatives":  # prompt: caption -> the caption alone (their negative-quality prompt)
            assert sample["prompt"] == sample["caption"] and sample["caption"].startswith("oil painting")
        else:  # prompt: assemble -> caption + separator + positive prompt (the restore rule)
            assert sample["prompt"] == f"{sample['caption']} | sharp, detailed"
    assert 8 <= drops <= 30  # 0.3 x 60 = 18
    rate = np.mean([s.plan(i).drop_caption for i in range(4000)])
    assert abs(rate - 0.3) < 0.03
    # the default rule is the restore config's (positive prompt and separator of configs/restore)
    from supirkit.train.data import load_restore_config

    rc = load_restore_config("restore/default.yaml")
    default = _stream(sets, caption_drop_prob=0.0)
    sample = default.sample(0)
    if default.member_names()[sample["member"]] != "negatives":
        assert sample["prompt"] == f"{sample['caption']}{rc.prompt.separator}{rc.prompt.positive}"


def test_micro_conditioning(sets):
    fixed = _stream(sets).micro_batch(0)["time_ids"]
    assert fixed.tolist() == [[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2
    s = _stream(sets, micro_conditioning="metadata")
    for i in range(6):
        sample = s.sample(i)
        h0, w0, top, left, th, tw = sample["time_ids"]
        assert (h0, w0) == (96.0, 128.0) and (th, tw) == (1024.0, 1024.0)
        assert 0 <= top <= 96 - 64 and 0 <= left <= 128 - 64


def test_crops_flips_and_degradation(sets):
    s = _stream(sets, caption_drop_prob=0.0)
    sample = s.sample(3)
    assert sample["hq"].shape == (64, 64, 3) and sample["lq"].shape == (64, 64, 3)
    assert not np.array_equal(sample["hq"], sample["lq"])  # the LQ is degraded
    flips = np.mean([s.plan(i).flip for i in range(2000)])
    assert abs(flips - 0.5) < 0.04
    # epochs: every rank's index maps onto the global sample count
    e = _stream(sets, rank=1, world=2, epoch_samples=10)
    assert [e.epoch_of(i) for i in (0, 4, 5, 9)] == [0, 0, 1, 1]


def test_unusable_inputs_are_clear_errors(sets, tmp_path):
    from supirkit.train.data import DataError, MixtureStream

    bad = [{"name": "hq", "shards": str(tmp_path / "nothing"), "weight": 1}]
    with pytest.raises(DataError, match="'hq'"):
        MixtureStream(data_section(bad), seed=0)
    with pytest.raises(DataError, match="hq_size"):
        MixtureStream(data_section(_mixture(sets), degrade_overrides=[]), seed=0)
    # a corrupt member is replaced by a deterministic redraw
    s = _stream(sets)
    real = s._make
    calls = []

    def flaky(draw):
        calls.append(draw.attempt)
        if draw.attempt == 0:
            from supirkit.datapipe.decode import DecodeError

            raise DecodeError("truncated")
        return real(draw)

    s._make = flaky
    got = s.sample(0)
    assert calls == [0, 1] and got["attempt"] == 1


# ---------------------------------------------------------------------------------------- checkpoints

def _fake_ckpt(out: Path, step: int, complete: bool = True) -> Path:
    from supirkit.train.checkpoint import STATE_FILE, checkpoints_dir, step_name

    p = checkpoints_dir(out) / step_name(step)
    p.mkdir(parents=True)
    if complete:
        (p / STATE_FILE).write_text(json.dumps({"step": step}))
    return p


def test_checkpoint_rotation_and_resolve(tmp_path):
    from supirkit.train.checkpoint import list_checkpoints, resolve_resume, rotate

    out = tmp_path / "run"
    assert resolve_resume(out, "latest") is None and resolve_resume(out, None) is None
    for s in (100, 200, 300, 400):
        _fake_ckpt(out, s)
    half = _fake_ckpt(out, 500, complete=False)  # killed while saving: never "latest"
    (out / "checkpoints" / ".tmp-step-00000600").mkdir()
    assert resolve_resume(out, "latest").name == "step-00000400"
    removed = rotate(out, 2)
    assert [p.name for p in removed] == ["step-00000100", "step-00000200"]
    assert [s for s, _ in list_checkpoints(out)] == [300, 400]
    assert not (out / "checkpoints" / ".tmp-step-00000600").exists()
    assert resolve_resume(out, "step-00000300").name == "step-00000300"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(out, str(half))


# ---------------------------------------------------------------------------------------- launcher

def test_supirkit_train_builds_the_accelerate_launch(capsys):
    from supirkit.cli import main

    code = main(["train", "--config", str(ROOT / "configs/train/demo.yaml"), "--launcher", "cpu_2proc",
                 "--set", "schedule.max_steps=3", "--resume", "latest", "--dry-run"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert "-m accelerate.commands.launch --config_file" in line and "cpu_2proc.yaml" in line
    # the precision comes from the training config (demo: no mixed precision), never from the launcher
    assert "--mixed_precision no" in line
    assert line.endswith("-m supirkit.train --config " + str(ROOT / "configs/train/demo.yaml")
                         + " --set schedule.max_steps=3 --resume latest")
    assert main(["train", "--config", str(ROOT / "configs/train/demo.yaml"), "--set", "optim.lr=-1",
                 "--dry-run"]) == 2
    assert main(["train", "--launcher", "nope", "--config", str(ROOT / "configs/train/demo.yaml"),
                 "--dry-run"]) == 2
    import yaml

    from supirkit.commands.train import LAUNCHERS

    for name in LAUNCHERS:
        acc = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
        assert acc["num_processes"] >= 1 and acc["distributed_type"] in ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED")
        # no value that the training config owns: one place for precision, accumulation and clipping
        assert "mixed_precision" not in acc and not {"gradient_accumulation_steps", "gradient_clipping"} & set(
            acc.get("deepspeed_config") or {}), name
    # DeepSpeed's accumulation and clipping are passed from the training config, from any working folder
    assert main(["train", "--config", str(ROOT / "configs/train/demo.yaml"), "--launcher", "deepspeed_zero2",
                 "--set", "schedule.grad_accum=3", "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert "--gradient_accumulation_steps 3" in line and "--gradient_clipping" in line
    # a multi-node run from any folder: every node runs the same line with its own rank; no local port is picked
    assert main(["train", "--config", str(ROOT / "configs/train/demo.yaml"), "--launcher", "multi_node",
                 "--num-machines", "4", "--machine-rank", "2", "--main-process-ip", "10.0.0.1", "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert "--num_machines 4 --machine_rank 2 --main_process_ip 10.0.0.1" in line
    assert "--main_process_port" not in line


def test_fsspec_urls_read_like_local_paths(sets):
    """Object-storage URLs go through fsspec (tar members by range reads) and give the same batches as the
    local copy. fsspec's in-memory filesystem stands in for s3:// here."""
    import fsspec

    from supirkit.train.data import MixtureStream

    fs = fsspec.filesystem("memory")
    for f in Path(sets["hq"][0]).iterdir():
        if f.suffix in (".tar", ".parquet"):
            fs.pipe(f"/train-test-hq/{f.name}", f.read_bytes())
    local = [{"name": "hq", "shards": str(sets["hq"][0]), "weight": 1}]
    url = [{"name": "hq", "shards": "memory://train-test-hq", "weight": 1}]
    a = MixtureStream(data_section(local), seed=1, batch_size=2)
    b = MixtureStream(data_section(url), seed=1, batch_size=2)
    assert all(u.startswith("memory://") for u in b.indexes[0].urls) and b.indexes[0].total == 24
    _same(a.micro_batch(3), b.micro_batch(3))


def test_stage_encoder_launches_the_encoder_config(capsys):
    from supirkit.cli import main

    assert main(["train", "--stage", "encoder", "--set", "model.pretrained=x", "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("-m supirkit.train --config train/encoder.yaml --set model.pretrained=x --stage encoder")


def test_8bit_adam_fails_early_with_a_clear_error(monkeypatch, capsys):
    """bitsandbytes is optional: without a GPU, or without the package, one line says what to do, before
    any model is loaded (the launcher refuses too)."""
    import sys

    import torch

    from supirkit.cli import main
    from supirkit.train.config import load_train_config
    from supirkit.train.setup import SetupError, build_optimizer, check_optimizer

    cfg = load_train_config(str(ROOT / "configs/train/demo.yaml"), ["optim.use_8bit_adam=true"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(SetupError, match="needs a CUDA GPU"):
        build_optimizer(cfg, params, on_cuda=False)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(SetupError, match=r"pip install 'supirkit\[quant\]'"):
        check_optimizer(cfg, on_cuda=True)
    plain = load_train_config(str(ROOT / "configs/train/demo.yaml"))
    assert check_optimizer(plain, on_cuda=False) is None
    assert isinstance(build_optimizer(plain, params, on_cuda=False), torch.optim.AdamW)
    rc = main(["train", "--config", str(ROOT / "configs/train/demo.yaml"), "--set", "optim.use_8bit_adam=true",
               "--cpu", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "use_8bit_adam needs a CUDA GPU" in err and len(err.splitlines()) == 1


def test_mixture_of_object_storage_and_local_sets(sets):
    """A mixture whose sets live on object storage (fsspec URL) and on local disk: the same batches as the
    all-local mixture, and the rank split works on URL shard lists as on local ones."""
    import fsspec

    from supirkit.train.data import MixtureStream

    fs = fsspec.filesystem("memory")
    for f in Path(sets["faces"][0]).iterdir():
        if f.suffix in (".tar", ".parquet"):
            fs.pipe(f"/train-test-faces/{f.name}", f.read_bytes())
    local = _mixture(sets)
    mixed = [dict(m) for m in local]
    mixed[1]["shards"] = "memory://train-test-faces"
    for rank, world in ((0, 1), (1, 2)):
        a = MixtureStream(data_section(local), seed=2, rank=rank, world=world, batch_size=4)
        b = MixtureStream(data_section(mixed), seed=2, rank=rank, world=world, batch_size=4)
        assert all(u.startswith("memory://") for u in b.indexes[1].urls)
        assert [v.mode for v in b.views] == [v.mode for v in a.views]
        for m in range(3):
            _same(a.micro_batch(m), b.micro_batch(m))
        i = next(i for i in range(1000) if b.plan(i).member == 1)  # the first sample drawn from the URL set
        x, y = a.sample(i), b.sample(i)
        assert x["key"] == y["key"] and x["key"].startswith("fc")
        assert np.array_equal(x["hq"], y["hq"]) and np.array_equal(x["lq"], y["lq"])


def test_full_size_step_benchmark_runs_at_tiny_size(tmp_path):
    """benchmarks/bench_train.py measures the full-size step on CUDA only; the same function at tiny size on
    CPU keeps that path working where no GPU is present."""
    import importlib.util
    import os
    import sys

    import torch

    from supirkit.tiny.sdxl import build_tiny_sdxl

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    threads, environ = torch.get_num_threads(), dict(os.environ)
    try:
        spec.loader.exec_module(bench)  # pins thread counts for the loader benchmark: undo that here
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)
    sys.modules.pop("bench_train", None)
    sdxl = build_tiny_sdxl(tmp_path / "sdxl", seed=0)
    read = lambda sub: json.loads((sdxl / sub / "config.json").read_text())  # noqa: E731
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "projection_dim")
    text = tuple({k: read(sub)[k] for k in keys} for sub in ("text_encoder", "text_encoder_2"))
    r = bench.full_size_step(torch.device("cpu"), steps=2, warmup=1, batch=2, px=64, unet_config=read("unet"),
                             vae_config=read("vae"), text_configs=text, layout=None)
    assert r["samples_per_s"] > 0 and r["trainable"] > 0 and r["peak_gib"] is None


def test_missing_tracker_package_is_refused(monkeypatch, capsys):
    """accelerate would only warn and log nothing: a wandb run without wandb stops with one line."""
    import sys

    from supirkit.cli import main
    from supirkit.train.config import load_train_config
    from supirkit.train.setup import SetupError, check_logging

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    cfg = load_train_config(str(ROOT / "configs/train/demo.yaml"), ["logging.backend=wandb"])
    with pytest.raises(SetupError, match="pip install wandb"):
        check_logging(cfg)
    check_logging(load_train_config(str(ROOT / "configs/train/demo.yaml"), ["logging.backend=none"]))
    rc = main(["train", "--config", str(ROOT / "configs/train/demo.yaml"), "--set", "logging.backend=wandb",
               "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "needs the wandb package" in err and len(err.splitlines()) == 1
