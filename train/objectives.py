"""What is trained and against what: the objectives, chosen by ``stage`` through a registry.

Adaptor step (spec §3.4b): HQ -> frozen VAE latent ``z0`` (posterior sample, x scaling factor); LQ -> the
frozen DR (or original) encoder's latent; prompts -> both frozen text encoders; ``t ~ U{lo..hi}``,
``x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps``; the controlled UNet predicts ``eps``; loss = mean squared error
(SDXL's discrete eps objective, = sgm's EpsWeighting x ||x0_hat - x0||^2). Only the adaptor is trained.

Encoder step: the degradation-robust encoder with the model developer's loss (``dr_encoder_loss``).

An objective holds its module and says what of it is trained (``trainable``), how a batch becomes a loss
(``loss``), what a checkpoint must keep (``checkpoint_prefix``) and how an export is written (``save``).
A new objective is one class registered with ``register_objective``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from supirkit.train.config import TrainConfig


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


def _gradient_checkpointing(cfg: TrainConfig, model_default: bool) -> bool:
    chosen = cfg.schedule.gradient_checkpointing
    return model_default if chosen is None else chosen


class AdaptorObjective:
    """SUPIR's adaptor on frozen SDXL; the trained module is the whole ``SUPIRModel`` (frozen parts inside
    are excluded from gradient sync)."""

    stage = "adaptor"
    #: what a checkpoint must hold: the adaptor; the frozen UNet and encoders come from model.pretrained
    checkpoint_prefix = "adaptor."
    needs_text = True

    def __init__(self, cfg: TrainConfig, frozen: FrozenSDXL, device, dtype):
        import torch
        from diffusers import UNet2DConditionModel

        from supirkit.model.config import load_model_config
        from supirkit.model.supir import SUPIRModel

        self.cfg, self.frozen, self.device, self.dtype = cfg, frozen, device, dtype
        mcfg = load_model_config(cfg.model.config)
        unet = UNet2DConditionModel.from_pretrained(cfg.model.pretrained, subfolder="unet")  # fp32: init copies it
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
        if _gradient_checkpointing(cfg, mcfg.gradient_checkpointing):
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
        from supirkit.model.supir import load_dr_encoder

        if cfg.model.dr_encoder:
            return load_dr_encoder(cfg.model.dr_encoder)
        return DegradationRobustEncoder.from_vae(frozen.vae)

    def module(self):
        return self.model

    def trainable(self, unwrapped) -> list:
        return unwrapped.trainable_parameters()

    def named_trainable(self, unwrapped) -> list:
        return [(n, p) for n, p in unwrapped.adaptor.named_parameters() if p.requires_grad]

    def _latents(self, unwrapped, batch: dict, generator):
        """z0 (HQ), the LQ latent, prompt embeddings and micro-conditioning of one batch (no gradients)."""
        import torch

        fz, device = self.frozen, self.device
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
        return z0, zlq, embeds, {"text_embeds": pooled, "time_ids": time_ids}

    def loss(self, module, unwrapped, batch: dict, generator, autocast):
        import torch
        import torch.nn.functional as F

        sch = self.cfg.schedule
        z0, zlq, embeds, added = self._latents(unwrapped, batch, generator)
        b = z0.shape[0]
        lo, hi = sch.timestep_range
        t = torch.randint(lo, hi + 1, (b,), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        if sch.offset_noise > 0:
            eps = eps + sch.offset_noise * torch.randn(b, z0.shape[1], 1, 1, generator=generator)
        t, eps = t.to(self.device), eps.to(self.device)
        a = self.frozen.alphas_cumprod[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with autocast():
            eps_hat = module(x_t, t, embeds, added, zlq)
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
    needs_text = False

    def __init__(self, cfg: TrainConfig, frozen: FrozenSDXL, device, dtype):
        import torch

        from supirkit.model.dr_encoder import DegradationRobustEncoder
        from supirkit.model.supir import load_dr_encoder

        self.cfg, self.frozen, self.device, self.dtype = cfg, frozen, device, dtype
        if cfg.model.dr_encoder:
            dr = load_dr_encoder(cfg.model.dr_encoder)
        else:
            dr = DegradationRobustEncoder.from_vae(frozen.vae)
        _move(dr, device, torch.float32).train().requires_grad_(True)
        if cfg.schedule.gradient_checkpointing:
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


#: objective class by training stage (``stage:`` in the training config)
OBJECTIVES: dict[str, Callable] = {}


def register_objective(cls):
    """Make ``cls`` the objective of ``cls.stage`` (a class decorator)."""
    OBJECTIVES[cls.stage] = cls
    return cls


register_objective(AdaptorObjective)
register_objective(EncoderObjective)


def build_objective(cfg: TrainConfig, device, dtype):
    """The objective of ``cfg.stage`` with the frozen SDXL parts it needs."""
    cls = OBJECTIVES.get(cfg.stage)
    if cls is None:
        raise ValueError(f"stage {cfg.stage!r}: no objective registered (known: {', '.join(sorted(OBJECTIVES))})")
    frozen = FrozenSDXL(cfg.model.pretrained, device, dtype, need_text=cls.needs_text)
    return cls(cfg, frozen, device, dtype)


__all__ = ["FrozenSDXL", "AdaptorObjective", "EncoderObjective", "OBJECTIVES", "register_objective",
           "build_objective", "save_copy"]
