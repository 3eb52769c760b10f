"""Training runs on a tiny random SDXL (CPU): two processes through accelerate on gloo, the kill-and-resume
drill, stop-and-resume in one process, checkpoint rotation, the encoder stage, and the exported adaptor
restoring an image through ``supirkit restore``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import read_trace, reset_accelerate, tiny_train_config, write_config, write_shard_set

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from supirkit.tiny.sdxl import build_tiny_sdxl

    root = tmp_path_factory.mktemp("train_run")
    sdxl = build_tiny_sdxl(root / "sdxl", seed=0)
    # a tiny set the adaptor can overfit: 4 + 2 images (one shard each per rank for the 2-process runs)
    write_shard_set(root / "hq", "hq", 2, 2, size=(80, 80), seed=1, caption="a photo of a cat")
    write_shard_set(root / "neg", "ng", 2, 1, size=(80, 80), seed=2, caption="oil painting, blurry")
    mixture = [{"name": "hq", "shards": str(root / "hq"), "weight": 3},
               {"name": "negatives", "shards": str(root / "neg"), "weight": 1, "prompt": "caption"}]
    return {"root": root, "sdxl": sdxl, "mixture": mixture}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
    env.pop("SUPIRKIT_FAULT", None)
    return env


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k


# ------------------------------------------------------------------------------------- two processes

TWO_PROC = dict(
    schedule={"max_steps": 8, "batch_size": 2, "warmup_steps": 1, "timestep_range": [200, 800]},
    checkpoint={"every_steps": 2, "keep_last": 2},
    logging={"backend": "tensorboard", "project": "t", "every_steps": 2, "trace": True},
    optim={"lr": 2e-3, "max_grad_norm": 1.0, "ema": {"enabled": True, "decay": 0.5}},
)


@pytest.fixture(scope="module")
def two_proc_run(setup):
    """An uninterrupted 2-process run through ``supirkit train`` (-> accelerate launch -> python -m supirkit.train)."""
    root = setup["root"]
    cfg = tiny_train_config(root, setup["sdxl"], setup["mixture"], **TWO_PROC,
                            validation={"every_steps": 8, "at_start": True, "loss_batches": 2, "num_images": 1,
                                        "metrics": ["psnr", "ssim"],
                                        "restore_overrides": ["sampler.num_steps=2", "image.min_size=64"]})
    path = write_config(root / "two.yaml", cfg)
    out = root / "two"
    proc = subprocess.run([str(Path(sys.executable).with_name("supirkit")), "train", "--config", str(path),
                           "--launcher", "cpu_2proc", "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"out": out, "config": path, "log": proc.stdout + proc.stderr}


def test_two_processes_train_in_lockstep_on_different_samples(two_proc_run):
    out = two_proc_run["out"]
    trace = read_trace(out)
    assert sorted(trace) == [0, 1] and [r["step"] for r in trace[0]] == list(range(1, 9))
    for r0, r1 in zip(trace[0], trace[1]):
        assert r0["params"] == r1["params"], f"ranks diverged at step {r0['step']}"  # DDP keeps them equal
        assert set(r0["keys"]).isdisjoint(r1["keys"])  # shards are split by rank
    assert len({r["params"] for r in trace[0]}) == 8  # and every step changed them
    # the loss falls on the tiny set: the validation loss (fixed batches, fixed noise) before and after
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val/loss"] for r in log if "val/loss" in r}
    assert sorted(val) == [0, 8] and val[8] < 0.9 * val[0], val
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/data_wait_s"} <= set(
        next(r for r in log if "train/loss" in r))
    assert any("val/psnr" in r for r in log) and (out / "validation" / "step-00000008.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    # rotation kept exactly keep_last=2 checkpoints; the adaptor was exported (with EMA weights)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000006", "step-00000008"]
    assert not any(".safetensors" in p.name and "unet" in p.name for p in (out / "checkpoints").rglob("*"))
    assert json.loads((out / "adaptor" / "training.json").read_text())["ema"] is True


def test_kill_and_resume_two_processes_matches_uninterrupted(two_proc_run, setup):
    """SIGKILL both ranks after step 5 (checkpoint at 4), rerun with --resume latest: the same parameters,
    step by step, as the uninterrupted run; the same exported adaptor, bit for bit."""
    root = setup["root"]
    cfg = tiny_train_config(root, setup["sdxl"], setup["mixture"], **TWO_PROC,
                            validation={"every_steps": 0, "loss_batches": 0})
    cfg["logging"]["backend"] = "none"
    path = write_config(root / "kill.yaml", cfg)
    out = root / "kill"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
              "-m", "supirkit.train", "--config", str(path), "--out", str(out), "--resume", "latest"]
    env = dict(_env(), SUPIRKIT_FAULT="train_step:5")
    killed = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert killed.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert not (out / "adaptor").exists()
    launch[launch.index("--main_process_port") + 1] = str(_free_port())
    resumed = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    ref, got = read_trace(two_proc_run["out"]), read_trace(out)
    for rank in (0, 1):
        assert [r["params"] for r in got[rank]] == [r["params"] for r in ref[rank]]
        assert [r["keys"] for r in got[rank]] == [r["keys"] for r in ref[rank]]
    _assert_same_weights(two_proc_run["out"] / "adaptor", out / "adaptor")


def test_exported_adaptor_restores_an_image(two_proc_run, setup, tmp_path):
    from PIL import Image
    from train_fixtures import textured_image

    from supirkit.cli import main

    img = tmp_path / "lq.png"
    Image.fromarray(textured_image(np.random.default_rng(3), 64, 64)).save(img)
    code = main(["restore", str(img), "--out", str(tmp_path / "restored"), "--sdxl", str(setup["sdxl"]),
                 "--adaptor", str(two_proc_run["out"] / "adaptor"), "--prompt", "a cat",
                 "--set", "sampler.num_steps=2", "--set", "image.min_size=64"])
    assert code == 0
    with Image.open(tmp_path / "restored" / "lq.png") as out:
        assert out.size == (64, 64)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- one process

def _run(cfg_dict: dict, path: Path, **kw):
    from supirkit.train.config import load_train_config
    from supirkit.train.trainer import train

    write_config(path, cfg_dict)
    reset_accelerate()
    try:
        return train(load_train_config(str(path)), **kw)
    finally:
        reset_accelerate()


def test_stop_and_resume_equals_uninterrupted(setup):
    """Early stop at step 2 then ``--resume latest`` with gradient accumulation and EMA: the same trained and
    EMA weights as the run that never stopped; rotation keeps exactly keep_last."""
    root = setup["root"]
    sections = dict(schedule={"max_steps": 4, "grad_accum": 2, "batch_size": 1},
                    checkpoint={"every_steps": 1, "keep_last": 3},
                    optim={"lr": 1e-3, "ema": {"enabled": True, "decay": 0.7}},
                    logging={"backend": "none", "trace": True})
    full = tiny_train_config(root / "one_full", setup["sdxl"], setup["mixture"], **sections)
    part = tiny_train_config(root / "one_part", setup["sdxl"], setup["mixture"], **sections)
    (root / "one_full").mkdir()
    (root / "one_part").mkdir()
    r = _run(full, root / "one_full.yaml")
    assert r.step == 4 and not r.stopped_early and r.export is not None
    first = _run(part, root / "one_part.yaml", resume="latest", stop_at_step=2)
    assert first.step == 2 and first.stopped_early and first.export is None
    second = _run(part, root / "one_part.yaml", resume="latest")
    assert second.step == 4 and not second.stopped_early
    ref, got = read_trace(Path(full["output_dir"])), read_trace(Path(part["output_dir"]))
    assert [x["params"] for x in got[0]] == [x["params"] for x in ref[0]]
    _assert_same_weights(Path(full["output_dir"]) / "adaptor", Path(part["output_dir"]) / "adaptor")
    _assert_same_weights(Path(full["output_dir"]) / "adaptor" / "dr_encoder",
                         Path(part["output_dir"]) / "adaptor" / "dr_encoder")
    names = sorted(p.name for p in (Path(part["output_dir"]) / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000004"]
    state = json.loads((Path(part["output_dir"]) / "checkpoints" / names[-1] / "train_state.json").read_text())
    assert state["step"] == 4 and state["micro_batches"] == 8
    # a checkpoint holds optimizer, scheduler, EMA (custom object) and the process's random states, which
    # load_state puts back; the trained weights only (the frozen SDXL is reloaded from model.pretrained)
    ckpt = Path(part["output_dir"]) / "checkpoints" / names[0]
    files = {p.name for p in ckpt.iterdir()}
    assert {"optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"} <= files, files
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("adaptor.") for k in f.keys())


def test_encoder_stage_trains_and_exports_the_dr_encoder(setup):
    import torch

    from supirkit.model.dr_encoder import DegradationRobustEncoder

    root = setup["root"]
    cfg = tiny_train_config(root / "enc", setup["sdxl"], setup["mixture"], stage="encoder",
                            schedule={"max_steps": 2, "batch_size": 1}, checkpoint={"every_steps": 2, "keep_last": 1},
                            optim={"lr": 1e-3})
    (root / "enc").mkdir()
    r = _run(cfg, root / "enc.yaml")
    assert r.step == 2 and r.export is not None
    trained = DegradationRobustEncoder.from_pretrained(Path(cfg["output_dir"]) / "adaptor" / "dr_encoder")
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(setup["sdxl"], subfolder="vae")
    start = DegradationRobustEncoder.from_vae(vae)
    diffs = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())]
    assert any(diffs)
    # the trained DR encoder plugs into the adaptor stage as its LQ encoder
    from supirkit.model.supir import load_dr_encoder

    assert load_dr_encoder(str(Path(cfg["output_dir"]) / "adaptor")) is not None


def test_only_trunk_and_connectors_are_trained(setup):
    """bf16 autocast + gradient checkpointing: gradients reach every adaptor weight and nothing else; one
    optimizer step changes the adaptor and leaves UNet, VAE, DR encoder and text encoders as loaded."""
    import torch

    from supirkit.train.config import TrainConfig
    from supirkit.train.data import build_stream
    from supirkit.train.objectives import AdaptorObjective, FrozenSDXL
    from supirkit.train.setup import build_optimizer

    cfg = TrainConfig.model_validate(tiny_train_config(
        setup["root"], setup["sdxl"], setup["mixture"],
        schedule={"max_steps": 1, "mixed_precision": "bf16", "gradient_checkpointing": True}))
    cpu = torch.device("cpu")
    frozen = FrozenSDXL(cfg.model.pretrained, cpu, torch.bfloat16)
    objective = AdaptorObjective(cfg, frozen, cpu, torch.bfloat16)
    model = objective.model
    assert model.gradient_checkpointing
    adaptor = {id(p) for p in model.adaptor.parameters()}
    assert {id(p) for p in objective.trainable(model)} == adaptor
    others = [(n, p) for n, p in model.named_parameters() if id(p) not in adaptor]
    others += [(f"vae.{n}", p) for n, p in frozen.vae.named_parameters()]
    others += [(f"text.{n}", p) for m in (frozen.text.text_encoder, frozen.text.text_encoder_2)
               for n, p in m.named_parameters()]
    assert others and not any(p.requires_grad for _, p in others)
    assert next(model.unet.parameters()).dtype == torch.bfloat16  # frozen in bf16, trained weights in fp32
    assert all(p.dtype == torch.float32 for p in model.adaptor.parameters())
    before = {n: p.detach().clone() for n, p in others}
    start = [p.detach().clone() for p in model.adaptor.parameters()]
    batch = build_stream(cfg.data, seed=0, rank=0, world=1, batch_size=2).micro_batch(0)
    optimizer = build_optimizer(cfg, objective.trainable(model), on_cuda=False)
    loss = objective.loss(model, model, batch, torch.Generator().manual_seed(0),
                          lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.adaptor.parameters())  # DDP needs every one used
    assert all(p.grad is None for _, p in others)
    optimizer.step()
    assert all(torch.equal(before[n], p) for n, p in others)
    assert any(not torch.equal(a, p) for a, p in zip(start, model.adaptor.parameters()))
