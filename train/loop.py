"""The accelerate training loop: SUPIR's adaptor (trunk + connectors) on frozen SDXL, or (``stage: encoder``)
the degradation-robust encoder.

Adaptor step (spec §3.4b): HQ -> frozen VAE latent ``z0`` (posterior sample, x scaling factor); LQ -> the
frozen DR (or original) encoder's latent; prompts -> both frozen text encoders; ``t ~ U{lo..hi}``,
``x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps``; the controlled UNet predicts ``eps``; loss = mean squared error
(SDXL's discrete eps objective, = sgm's EpsWeighting x ||x0_hat - x0||^2). Only the adaptor is trained.

Determinism: the data of micro-batch ``m`` on rank ``r`` is a function of (seed, r, m) (``train.data``), and so
is every random draw of the step (VAE posterior noise, timesteps, noise: a generator seeded from (seed, r, m)).
Model, optimizer, scheduler and EMA states come back from the checkpoint, so a run resumed at step ``s``
computes exactly what the uninterrupted run computed from step ``s`` on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from supirkit.train.config import TrainConfig

log = logging.getLogger("supirkit.train")

#: tags that keep the different random streams derived from the run seed apart
_NOISE_STREAM = 7
_VAL_NOISE_STREAM = 8


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixing)."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class RunResult:
    step: int
    output_dir: Path
    export: Optional[Path]
    stopped_early: bool


# ---------------------------------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of the trained parameters (fp32 shadow copies on their device).

    Registered with ``accelerator.register_for_checkpointing``, so it is saved and restored with the run.
    """

    def __init__(self, params, decay: float, update_every: int = 1, start_step: int = 0):
        import torch

        self.params = list(params)
        self.decay, self.update_every, self.start_step = float(decay), int(update_every), int(start_step)
        self.shadow = [p.detach().to(torch.float32).clone() for p in self.params]
        self.num_updates = 0

    def update(self, step: int) -> None:
        import torch

        if step % self.update_every:
            return
        with torch.no_grad():
            current = [p.detach().to(torch.float32) for p in self.params]
            if step <= self.start_step:
                torch._foreach_copy_(self.shadow, current)
            else:
                torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"shadow": [s.detach().cpu() for s in self.shadow], "num_updates": self.num_updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        import torch

        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v.to(s.device))
        self.num_updates = int(state.get("num_updates", 0))

    @contextmanager
    def applied(self):
        """The EMA weights in the model for the duration (exports, validation); the live ones after."""
        import torch

        with torch.no_grad():
            backup = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)


# ------------------------------------------------------------------------------------------ frozen parts

class FrozenSDXL:
    """The frozen SDXL pieces every step needs: VAE, both text encoders, the training noise schedule."""

    def __init__(self, pretrained: str, device, dtype, need_text: bool = True):
        import torch
        from diffusers import AutoencoderKL, EulerDiscreteScheduler

        from supirkit.model.sampler import SigmaSchedule
        from supirkit.model.text import SDXLTextEncoders

        # SDXL's VAE overflows in fp16 (SUPIR runs it in bf16): keep it in fp32 when fp16 is asked for.
        self.vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        self.vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae").to(device=device, dtype=self.vae_dtype)
        self.vae.requires_grad_(False).eval()
        self.text = SDXLTextEncoders.from_pretrained(pretrained, dtype=dtype, device=device) if need_text else None
        self.schedule = SigmaSchedule.from_scheduler_config(
            EulerDiscreteScheduler.load_config(pretrained, subfolder="scheduler"))
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.scaling = float(self.vae.config.scaling_factor)
        self.device = device


def _move(module, device, dtype):
    """``.to`` that passes the dtype only when it changes (diffusers warns on every dtype cast)."""
    current = next(module.parameters()).dtype
    return module.to(device=device) if current == dtype else module.to(device=device, dtype=dtype)


def _images(batch_uint8, device, dtype):
    from supirkit.train.data import to_model_range

    return to_model_range(batch_uint8, device, dtype)


class AdaptorObjective:
    """SUPIR's adaptor on frozen SDXL; the trained module is the whole ``SUPIRModel`` (frozen parts inside
    are excluded from gradient sync)."""

    stage = "adaptor"
    #: what a checkpoint must hold: the adaptor; the frozen UNet and encoders come from model.pretrained
    checkpoint_prefix = "adaptor."

    def __init__(self, cfg: TrainConfig, frozen: FrozenSDXL, device, dtype):
        import torch
        from diffusers import UNet2DConditionModel

        from supirkit.model.config import load_model_config
        from supirkit.model.supir import SUPIRModel

        self.cfg, self.frozen, self.device, self.dtype = cfg, frozen, device, dtype
        mcfg = load_model_config(cfg.model.config)
        unet = UNet2DConditionModel.from_pretrained(cfg.model.pretrained, subfolder="unet")  # fp32: adaptor init copies it
        dr = self._lq_encoder(cfg, frozen)
        if cfg.model.init_adaptor:
            model = SUPIRModel.from_adaptor(unet, cfg.model.init_adaptor, control_scale=mcfg.control_scale,
                                            load_dr_encoder=False)
            model.dr_encoder = dr
            if dr is not None:
                dr.requires_grad_(False)
        else:
            model = SUPIRModel.from_unet(unet, mcfg.trunk.selected(),
                                         sft_hidden_channels=mcfg.connectors.sft_hidden_channels,
                                         cross_attn_head_dim=mcfg.connectors.cross_attn_head_dim,
                                         dr_encoder=dr, control_scale=mcfg.control_scale)
        _move(model.unet, device, dtype).eval()
        _move(model.adaptor, device, torch.float32).train()  # fp32 master weights; autocast computes in bf16
        model.adaptor.requires_grad_(True)
        if model.dr_encoder is not None:
            _move(model.dr_encoder, device, frozen.vae_dtype).eval()
        checkpointing = cfg.schedule.gradient_checkpointing
        if checkpointing is None:
            checkpointing = mcfg.gradient_checkpointing
        if checkpointing:
            model.enable_gradient_checkpointing()
        # Frozen weights are loaded identically on every rank: DDP need not broadcast or watch them.
        model._ddp_params_and_buffers_to_ignore = [
            n for n, _ in list(model.named_parameters()) + list(model.named_buffers()) if not n.startswith("adaptor.")]
        self.model = model

    @staticmethod
    def _lq_encoder(cfg: TrainConfig, frozen: FrozenSDXL):
        if cfg.model.lq_encoder == "vae":
            return None
        from supirkit.model.dr_encoder import DegradationRobustEncoder

        if cfg.model.dr_encoder:
            return load_dr_encoder(cfg.model.dr_encoder)
        return DegradationRobustEncoder.from_vae(frozen.vae)

    def module(self):
        return self.model

    def trainable(self, unwrapped) -> list:
        return unwrapped.trainable_parameters()

    def named_trainable(self, unwrapped) -> list:
        return [(n, p) for n, p in unwrapped.adaptor.named_parameters() if p.requires_grad]

    def loss(self, module, unwrapped, batch: dict, generator, autocast):
        import torch
        import torch.nn.functional as F

        fz, sch = self.frozen, self.cfg.schedule
        device = self.device
        with torch.no_grad():
            hq = _images(batch["hq"], device, fz.vae_dtype)
            lq = _images(batch["lq"], device, fz.vae_dtype)
            post = fz.vae.encode(hq).latent_dist
            z0 = post.mean
            if self.cfg.model.vae_sample:
                n = torch.randn(post.mean.shape, generator=generator).to(device=device, dtype=post.mean.dtype)
                z0 = post.mean + post.std * n
            z0 = z0.float() * fz.scaling
            dr = unwrapped.dr_encoder
            if dr is not None:
                zlq = dr.latent(lq, fz.vae).float()
            else:
                zlq = fz.vae.encode(lq).latent_dist.mode().float() * fz.scaling
            embeds, pooled = fz.text.encode(list(batch["prompt"]))
            time_ids = batch["time_ids"].to(device)
        b = z0.shape[0]
        lo, hi = sch.timestep_range
        t = torch.randint(lo, hi + 1, (b,), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        if sch.offset_noise > 0:
            eps = eps + sch.offset_noise * torch.randn(b, z0.shape[1], 1, 1, generator=generator)
        t, eps = t.to(device), eps.to(device)
        a = fz.alphas_cumprod[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with autocast():
            eps_hat = module(x_t, t, embeds, {"text_embeds": pooled, "time_ids": time_ids}, zlq)
        return F.mse_loss(eps_hat.float(), eps)

    def save(self, unwrapped, state: dict, directory: Path) -> None:
        """The adaptor (and its DR encoder, if any) with the weights in ``state``, the model's full state dict."""
        from supirkit.model.supir import DR_ENCODER_SUBFOLDER

        save_copy(unwrapped.adaptor, _strip(state, "adaptor."), directory)
        if unwrapped.dr_encoder is not None:
            save_copy(unwrapped.dr_encoder, _strip(state, "dr_encoder."), Path(directory) / DR_ENCODER_SUBFOLDER)


class _CallThrough:
    """Calls go through the (DDP-)wrapped module, attribute reads (``dtype``) to the plain one."""

    def __init__(self, wrapped, plain):
        self._wrapped, self._plain = wrapped, plain

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._plain, name)


class EncoderObjective:
    """The degradation-robust encoder with the model developer's loss (``dr_encoder_loss``)."""

    stage = "encoder"
    checkpoint_prefix = None  # the whole module is trained

    def __init__(self, cfg: TrainConfig, frozen: FrozenSDXL, device, dtype):
        import torch

        from supirkit.model.dr_encoder import DegradationRobustEncoder

        self.cfg, self.frozen, self.device, self.dtype = cfg, frozen, device, dtype
        if cfg.model.dr_encoder:
            dr = load_dr_encoder(cfg.model.dr_encoder)
        else:
            dr = DegradationRobustEncoder.from_vae(frozen.vae)
        _move(dr, device, torch.float32).train().requires_grad_(True)
        checkpointing = cfg.schedule.gradient_checkpointing
        if checkpointing:
            dr.enable_gradient_checkpointing()
            frozen.vae.enable_gradient_checkpointing()  # gradients flow through the frozen decoder
        self.model = dr

    def module(self):
        return self.model

    def trainable(self, unwrapped) -> list:
        return [p for p in unwrapped.parameters() if p.requires_grad]

    def named_trainable(self, unwrapped) -> list:
        return [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]

    def loss(self, module, unwrapped, batch: dict, generator, autocast):
        from supirkit.model.dr_encoder import dr_encoder_loss

        fz = self.frozen
        hq = _images(batch["hq"], self.device, fz.vae_dtype)
        lq = _images(batch["lq"], self.device, fz.vae_dtype)
        with autocast():
            return dr_encoder_loss(_CallThrough(module, unwrapped), fz.vae, lq, hq, self.cfg.encoder.loss_target)

    def save(self, unwrapped, state: dict, directory: Path) -> None:
        from supirkit.model.supir import DR_ENCODER_SUBFOLDER

        save_copy(unwrapped, state, Path(directory) / DR_ENCODER_SUBFOLDER)


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_copy(template, state: dict, directory: Path) -> None:
    """Save ``template``'s architecture (a diffusers model) with the weights in ``state`` as a diffusers folder.

    The export goes through a state dict, not the live module, because under FSDP the live module holds only
    this process's shard: ``accelerator.get_state_dict`` gathers the full one on the main process (and is a
    plain ``state_dict()`` otherwise, so every launcher takes this one path)."""
    import torch

    with torch.device("meta"):
        copy = type(template).from_config(template.config)
    copy.load_state_dict(state, strict=True, assign=True)
    copy.save_pretrained(directory, safe_serialization=True)


def load_dr_encoder(path: str):
    """A DR encoder from an adaptor folder (``dr_encoder/`` inside) or from its own folder."""
    from supirkit.model.dr_encoder import DegradationRobustEncoder
    from supirkit.model.supir import load_dr_encoder_if_present

    p = Path(path)
    dr = load_dr_encoder_if_present(p)
    if dr is None:
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no DR encoder (neither {p}/dr_encoder/ nor a config.json)")
        dr = DegradationRobustEncoder.from_pretrained(p)
    return dr.requires_grad_(False)


# ------------------------------------------------------------------------------------------------ logging

class RunLog:
    """Metrics to the accelerate trackers (TensorBoard/wandb) and to ``train_log.jsonl`` (main process)."""

    def __init__(self, accelerator, out: Path, backend: str):
        self.accelerator, self.backend = accelerator, backend
        self.path = out / "train_log.jsonl"
        self.main = accelerator.is_main_process

    def metrics(self, values: dict, step: int) -> None:
        if self.backend != "none":
            self.accelerator.log(values, step=step)
        if self.main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")

    def image(self, tag: str, image, step: int) -> None:
        if not self.main or self.backend == "none":
            return
        try:
            if self.backend == "tensorboard":
                self.accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, image, step, dataformats="HWC")
            elif self.backend == "wandb":
                import wandb

                self.accelerator.get_tracker("wandb", unwrap=True).log({tag: wandb.Image(image)}, step=step)
        except Exception as exc:  # a tracker problem must not stop training
            log.warning("could not log image %s: %s", tag, exc)


def _flat_config(cfg: TrainConfig) -> dict:
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix[:-1]] = value
        else:
            out[prefix[:-1]] = json.dumps(value)

    walk("", cfg.model_dump(mode="json"))
    return out


def training_hash(cfg: TrainConfig) -> str:
    """What must not change when a run is resumed: model, data, optimiser and the schedule."""
    from supirkit.datapipe.config import config_hash

    return config_hash(cfg, exclude=("output_dir", "checkpoint", "logging", "validation", "runtime"))


def param_digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------- partial checkpoints

def _strip_wrapper(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def _keep_only(prefix: str):
    """A save_state pre-hook that drops every model weight outside ``prefix`` (the frozen parts)."""

    def hook(models, weights, output_dir):
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if _strip_wrapper(k).startswith(prefix)}

    return hook


def _check_partial_checkpoint(ckpt: Path, trainable: list[str], prefix: str) -> None:
    """A partial checkpoint is loaded with strict=False: check first that every trained weight is in it."""
    from safetensors import safe_open

    files = sorted(Path(ckpt).glob("model*.safetensors"))
    if not files:  # written with safe_serialization=False
        return
    with safe_open(str(files[0]), framework="pt") as f:
        have = {_strip_wrapper(k) for k in f.keys()}
    missing = [prefix + n for n in trainable if prefix + n not in have]
    if missing:
        raise SetupError(f"checkpoint {ckpt} lacks {len(missing)} trained weights (e.g. {missing[0]}): "
                         "it was written for a different model config")


# ---------------------------------------------------------------------------------------------------- run

class SetupError(RuntimeError):
    """The run cannot start as configured (a one-line message for the user, no traceback)."""


def check_optimizer(cfg: TrainConfig, on_cuda: bool):
    """The 8-bit AdamW module, or None for torch's AdamW; a ``SetupError`` when 8-bit Adam cannot run here.
    Called before SDXL is loaded (minutes at full size) so that a missing package fails at once."""
    if not cfg.optim.use_8bit_adam:
        return None
    if not on_cuda:
        raise SetupError("optim.use_8bit_adam needs a CUDA GPU (bitsandbytes); set it to false on CPU")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise SetupError("optim.use_8bit_adam needs bitsandbytes: pip install 'supirkit[quant]' "
                         "or set optim.use_8bit_adam=false") from None
    return bnb


def check_logging(cfg: TrainConfig) -> None:
    """accelerate drops a tracker whose package is missing with only a warning: refuse instead."""
    import importlib.util

    backend = cfg.logging.backend
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise SetupError(f"logging.backend {backend} needs the {backend} package: pip install {backend}, "
                         "or choose another backend (tensorboard, wandb, none)")


def build_optimizer(cfg: TrainConfig, params, on_cuda: bool):
    import torch

    o = cfg.optim
    bnb = check_optimizer(cfg, on_cuda)
    if bnb is not None:
        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)


def build_scheduler(cfg: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    s = cfg.schedule
    return get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=s.max_steps)


def train(cfg: TrainConfig, resume: Optional[str] = None, stop_at_step: Optional[int] = None) -> RunResult:
    """Run (or continue) the training described by ``cfg``. Call it in every process of the launch."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, ProjectConfiguration

    from supirkit.datapipe import faults
    from supirkit.model.runtime import apply_runtime_options
    from supirkit.train.checkpoint import export_folder, read_state, resolve_resume, save_checkpoint
    from supirkit.train.data import build_loader, build_stream

    sch, out = cfg.schedule, Path(cfg.output_dir)
    backend = cfg.logging.backend
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=sch.mixed_precision,
        gradient_accumulation_steps=sch.grad_accum, log_with=None if backend == "none" else backend,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False)  # the LR schedule counts optimizer steps, not steps x processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[sch.mixed_precision]
    if device.type == "cuda" and sch.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    check_optimizer(cfg, device.type == "cuda")
    check_logging(cfg)
    torch.manual_seed(seed_for(sch.seed, 0))  # new weights (connectors) start equal on every rank
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and cfg.optim.ema.enabled:
        raise SetupError("optim.ema with FSDP is not supported (sharded parameters); disable EMA or use DDP/ZeRO-2")
    frozen = FrozenSDXL(cfg.model.pretrained, device, dtype, need_text=cfg.stage == "adaptor")
    objective = (AdaptorObjective if cfg.stage == "adaptor" else EncoderObjective)(cfg, frozen, device, dtype)
    apply_runtime_options(cfg.runtime, objective.module(), frozen.vae, device)
    plain = objective.module()
    params = objective.trainable(plain)
    optimizer = build_optimizer(cfg, params, device.type == "cuda")
    lr_scheduler = build_scheduler(cfg, optimizer)
    ema = None
    if cfg.optim.ema.enabled:
        e = cfg.optim.ema
        ema = EMA(params, e.decay, e.update_every, e.start_step)
        accelerator.register_for_checkpointing(ema)
    module, optimizer, lr_scheduler = accelerator.prepare(plain, optimizer, lr_scheduler)
    if accelerator.gradient_accumulation_steps != sch.grad_accum:
        raise SetupError(f"the launcher's gradient accumulation ({accelerator.gradient_accumulation_steps}) differs from "
                         f"schedule.grad_accum ({sch.grad_accum}): make them equal (DeepSpeed config)")
    unwrapped = accelerator.unwrap_model(module)
    params = objective.trainable(unwrapped)
    partial = objective.checkpoint_prefix is not None and accelerator.distributed_type in (
        DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    if partial:
        # The frozen SDXL weights are reloaded from model.pretrained: a checkpoint holds only what is trained
        # (the adaptor: ~1/3 of the full model at SDXL size), so K checkpoints do not cost K copies of SDXL.
        accelerator.register_save_state_pre_hook(_keep_only(objective.checkpoint_prefix))

    start_step = 0
    ckpt = resolve_resume(out, resume)
    run_hash = training_hash(cfg)
    if ckpt is not None:
        state = read_state(ckpt)
        if state.get("training_hash") not in (None, run_hash):
            log.warning("resuming %s with a changed model/data/optim/schedule config (%s -> %s)", ckpt,
                        state.get("training_hash"), run_hash)
        if partial:
            _check_partial_checkpoint(ckpt, [n for n, _ in objective.named_trainable(unwrapped)],
                                      objective.checkpoint_prefix)
            accelerator.load_state(str(ckpt), strict=False)
        else:
            accelerator.load_state(str(ckpt))
        start_step = int(state["step"])
        if int(state.get("world_size", world)) != world:
            # sample i of rank r is drawn from rank r's shards: other ranks, other samples from here on
            log.warning("checkpoint %s was written by %s processes, this run has %d: training continues, but not "
                        "on the samples the original run would have drawn", ckpt, state.get("world_size"), world)
        log.info("resumed from %s at step %d", ckpt, start_step)
    elif resume:
        log.info("no checkpoint under %s yet: starting at step 0", out)
    if backend != "none":
        accelerator.init_trackers(cfg.logging.project, config=_flat_config(cfg))
    runlog = RunLog(accelerator, out, backend)

    a_steps = sch.grad_accum
    stream = build_stream(cfg.data, seed=sch.seed, rank=rank, world=world, batch_size=sch.batch_size,
                          start_micro_batch=start_step * a_steps)
    loader = build_loader(stream, cfg.data.num_workers, cfg.data.prefetch_factor, pin_memory=device.type == "cuda")
    if accelerator.is_main_process:
        log.info("stage %s: %d trainable parameters, %d process(es), batch %d x accum %d x %d = %d per step; "
                 "mixture %s (%d rows); steps %d..%d", cfg.stage, sum(p.numel() for p in params), world,
                 sch.batch_size, a_steps, world, sch.batch_size * a_steps * world,
                 ", ".join(f"{n} {p:.3f}" for n, p in zip(stream.member_names(), stream.probs)),
                 stream.total_rows, start_step, sch.max_steps)

    validator = None

    def validate(step: int) -> None:
        nonlocal validator
        v = cfg.validation
        if fsdp:  # the main process holds a shard of the model only; restore the exported adaptor instead
            if validator is None:
                log.warning("validation is skipped under FSDP: run `supirkit restore` on an exported adaptor")
                validator = False
            return
        if accelerator.is_main_process:
            from supirkit.train.validate import Validator

            if validator is None:
                validator = Validator(cfg, device, out, stream.indexes)
            ctx = ema.applied() if ema is not None else nullcontext()
            with ctx:
                values: dict = {}
                if v.loss_batches:
                    values.update(validator.loss(objective, module, unwrapped, accelerator.autocast))
                if cfg.stage == "adaptor" and v.num_images:
                    with accelerator.autocast():
                        metrics, grid = validator.restore(unwrapped, frozen, step)
                    values.update(metrics)
                    if grid is not None:
                        runlog.image("val/restored", grid, step)
            if values:
                runlog.metrics(values, step)
                log.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        accelerator.wait_for_everyone()

    def checkpoint(step: int) -> None:
        save_checkpoint(accelerator, out, step, {"training_hash": run_hash, "stage": cfg.stage,
                                                 "world_size": world, "micro_batches": step * a_steps},
                        cfg.checkpoint.keep_last)

    def export(step: int) -> Optional[Path]:
        accelerator.wait_for_everyone()
        path = None
        use_ema = ema is not None and cfg.checkpoint.export_ema
        with (ema.applied() if use_ema else nullcontext()):
            state = accelerator.get_state_dict(module)  # every process takes part (a gather under FSDP)
        if accelerator.is_main_process:
            path = export_folder(out, step, lambda d: objective.save(unwrapped, state, d),
                                 {"stage": cfg.stage, "ema": use_ema, "pretrained": cfg.model.pretrained})
            log.info("exported %s", path)
        del state
        accelerator.wait_for_everyone()
        return path

    trace = None
    if cfg.logging.trace:
        (out / "trace").mkdir(parents=True, exist_ok=True)
        trace = open(out / "trace" / f"rank-{rank}.jsonl", "a", encoding="utf-8")

    step = start_step
    if step == 0 and cfg.validation.every_steps and cfg.validation.at_start:
        validate(0)
    data_iter = iter(loader)
    window = {"t0": time.perf_counter(), "wait": 0.0, "steps": 0, "losses": []}
    grad_norm = None
    last_saved, exported = -1, None
    stop = stop_at_step if stop_at_step is not None else sch.max_steps
    stop = min(stop, sch.max_steps)
    module.train()
    while step < stop:
        keys, members = [], []
        step_losses = []
        for a in range(a_steps):
            m = step * a_steps + a
            t0 = time.perf_counter()
            batch = next(data_iter)
            window["wait"] += time.perf_counter() - t0
            if batch["micro_batch"] != m:  # the loader must deliver micro-batches in order
                raise RuntimeError(f"data stream out of order: expected micro-batch {m}, got {batch['micro_batch']}")
            generator = torch.Generator().manual_seed(seed_for(sch.seed, _NOISE_STREAM, rank, m))
            with accelerator.accumulate(module):
                loss = objective.loss(module, unwrapped, batch, generator, accelerator.autocast)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = cfg.optim.max_grad_norm or math.inf
                    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(loss.detach())
            keys.extend(batch["key"])
            members.extend(batch["member"].tolist())
        lr_scheduler.step()
        step += 1
        if ema is not None:
            ema.update(step)
        step_loss = torch.stack(step_losses).mean()
        window["losses"].append(step_loss)
        window["steps"] += 1
        if trace is not None:
            trace.write(json.dumps({"step": step, "keys": keys, "members": members, "loss": float(step_loss),
                                    "params": param_digest(params)}) + "\n")
            trace.flush()
        if step % cfg.logging.every_steps == 0 or step == stop:
            elapsed = time.perf_counter() - window["t0"]
            mean_loss = accelerator.reduce(torch.stack(window["losses"]).mean(), reduction="mean")
            values = {
                "train/loss": float(mean_loss),
                "train/lr": float(lr_scheduler.get_last_lr()[0]),
                "train/samples_per_s": window["steps"] * sch.batch_size * a_steps * world / max(elapsed, 1e-9),
                "train/data_wait_s": window["wait"] / window["steps"],
                "train/data_wait_frac": window["wait"] / max(elapsed, 1e-9),
                "train/epoch": stream.epoch_of(step * a_steps * sch.batch_size),
            }
            if grad_norm is not None:
                values["train/grad_norm"] = float(grad_norm)
            runlog.metrics(values, step)
            if accelerator.is_main_process:
                log.info("step %d/%d loss %.4f lr %.3g grad %.3g %.1f samples/s data wait %.0f%%", step,
                         sch.max_steps, values["train/loss"], values["train/lr"], values.get("train/grad_norm", 0.0),
                         values["train/samples_per_s"], 100 * values["train/data_wait_frac"])
            window = {"t0": time.perf_counter(), "wait": 0.0, "steps": 0, "losses": []}
        if step % cfg.checkpoint.every_steps == 0:
            checkpoint(step)
            last_saved = step
        if cfg.checkpoint.export_every_steps and step % cfg.checkpoint.export_every_steps == 0 and step < sch.max_steps:
            exported = export(step)
        if cfg.validation.every_steps and step % cfg.validation.every_steps == 0 and step < sch.max_steps:
            validate(step)
        faults.maybe_fail("train_step", step)

    if last_saved != step and step > start_step:
        checkpoint(step)
    finished = step >= sch.max_steps
    if finished and step > start_step:
        exported = export(step)
        if cfg.validation.every_steps:
            validate(step)
    if trace is not None:
        trace.close()
    accelerator.wait_for_everyone()
    if backend != "none":
        accelerator.end_training()
    return RunResult(step=step, output_dir=out, export=exported, stopped_early=not finished)


__all__ = ["train", "RunResult", "SetupError", "check_optimizer", "check_logging", "build_optimizer", "EMA", "AdaptorObjective", "EncoderObjective", "FrozenSDXL", "seed_for",
           "param_digest", "training_hash", "load_dr_encoder"]
