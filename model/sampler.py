"""Restoration-guided sampling with the official semantics (``RestoreEDMSampler``, sgm ``sampling.py:L528-597``).

* EDM/Karras stochastic Euler ("churn") on SDXL's LegacyDDPM sigma grid (timesteps
  ``int(linspace(999, 0, n, endpoint=False))`` reversed, sigmas descending, then 0);
* discrete eps denoiser: sigma snapped to the nearest of the 1000 training sigmas, UNet input ``x * c_in``
  with ``c_in = 1/sqrt(sigma^2 + 1)``, timestep = the snapped index, ``x0 = x - sigma * eps``;
* CFG on the x0 predictions, the negative-quality prompt as the unconditional branch, with the linear
  schedule ``scale(sigma_hat) = (start - end) * sigma_hat / sigma_max + end``;
* optional linear control-scale schedule ``cs(sigma) = (sigma / sigma_max) * (start - end) + end``;
* restoration guidance: ``x0 <- lerp(x0, x_center, (sigma / sigma_max) ** tau_r)`` whenever the next sigma is
  above 0.05 (so never at the last step); the weight uses sigma, not sigma_hat, as the official code does;
* the initial latent is ``randn * sqrt(1 + sigma_max^2)`` (official; the paper writes sigma_T).

Design decisions [I]: one noise field is drawn from the generator at every step, churn or not, so that the
tiled and the untiled sampler consume the generator identically; sigma_max is the schedule's own sigma_999
(14.614641...) where the official code hard-codes 14.6146. The Gaussian tile weights are the official ones
(rows centred at n / 2, columns at (n - 1) / 2); ``tiling.weights: centred`` centres both at (n - 1) / 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch


class SigmaSchedule:
    """SDXL's discrete schedule (``scaled_linear`` betas 0.00085..0.012, 1000 steps) in sigma form."""

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000):
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()  # ascending, index = timestep
        self.num_train_timesteps = num_train_timesteps

    @classmethod
    def from_scheduler_config(cls, config) -> "SigmaSchedule":
        c = dict(config)
        if c.get("beta_schedule", "scaled_linear") != "scaled_linear":
            raise ValueError(f"unsupported beta_schedule {c.get('beta_schedule')!r} (SDXL uses scaled_linear)")
        if c.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("the SUPIR sampler expects an epsilon-prediction SDXL")
        return cls(c.get("beta_start", 0.00085), c.get("beta_end", 0.012), c.get("num_train_timesteps", 1000))

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def grid(self, num_steps: int) -> torch.Tensor:
        """Descending sigmas of ``num_steps`` steps followed by 0 (sgm LegacyDDPMDiscretization)."""
        n = self.num_train_timesteps
        if num_steps < n:
            import numpy as np  # the exact float64 linspace + truncation of sgm's discretizer

            timesteps = np.linspace(n - 1, 0, num_steps, endpoint=False).astype(int)[::-1].tolist()
        elif num_steps == n:
            timesteps = list(range(n))
        else:
            raise ValueError(f"num_steps {num_steps} exceeds the {n} training timesteps")
        sigmas = self.sigmas[timesteps].flip(0)
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def to_index(self, sigma: torch.Tensor) -> torch.Tensor:
        sig = self.sigmas.to(sigma.device)
        return (sigma.reshape(-1, 1) - sig[None, :]).abs().argmin(dim=1)

    def timesteps(self, num_steps: int) -> list[int]:
        return [int(i) for i in self.to_index(self.grid(num_steps)[:-1])]


@dataclass
class Conditioning:
    """Everything the adapted UNet reads besides the noisy latent; ``control`` is the LQ latent."""

    prompt_embeds: torch.Tensor  # (B, 77, cross_attention_dim)
    pooled: torch.Tensor  # (B, pooled dim)
    time_ids: torch.Tensor  # (B, 6) micro-conditioning
    control: torch.Tensor  # (B, 4, h, w)

    def with_control(self, control: torch.Tensor) -> "Conditioning":
        return replace(self, control=control)

    @staticmethod
    def cat(a: "Conditioning", b: "Conditioning") -> "Conditioning":
        return Conditioning(*(torch.cat([x, y]) for x, y in
                              ((a.prompt_embeds, b.prompt_embeds), (a.pooled, b.pooled),
                               (a.time_ids, b.time_ids), (a.control, b.control))))


#: eps_fn(x_in, t, cond, control_scale) -> epsilon; x_in is already multiplied by c_in, t is the index.
EpsFn = Callable[[torch.Tensor, torch.Tensor, Conditioning, float], torch.Tensor]


def supir_eps_fn(model, dtype: Optional[torch.dtype] = None) -> EpsFn:
    """Adapter from ``SUPIRModel`` to the sampler; computes in ``dtype`` and returns float32."""

    def eps(x_in, t, cond: Conditioning, control_scale: float) -> torch.Tensor:
        d = dtype or next(model.adaptor.parameters()).dtype
        added = {"text_embeds": cond.pooled.to(d), "time_ids": cond.time_ids.to(d)}
        out = model(x_in.to(d), t, cond.prompt_embeds.to(d), added, cond.control.to(d), control_scale=control_scale)
        return out.float()

    return eps


@dataclass
class SamplerSettings:
    """Sampler knobs in the official names' meaning; ``tau_r=None`` turns restoration guidance off."""

    num_steps: int = 50
    tau_r: Optional[float] = None
    s_churn: float = 5.0
    s_noise: float = 1.01
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    cfg_scale: float = 4.0  # official s_cfg: the scale reached as sigma -> 0
    cfg_scale_start: float = 1.0  # official spt_linear_CFG: the scale at sigma_max
    linear_cfg: bool = True
    control_scale: float = 1.0  # official s_stage2
    control_scale_start: float = 0.0  # official spt_linear_s_stage2
    linear_control_scale: bool = False
    guidance_min_sigma: float = 0.05  # official restore_cfg_s_tmin

    @classmethod
    def from_config(cls, cfg) -> "SamplerSettings":
        """From ``SamplerConfig``: official ``restore_cfg <= 0`` means guidance off."""
        return cls(num_steps=cfg.num_steps, tau_r=cfg.restore_cfg if cfg.restore_cfg > 0 else None,
                   s_churn=cfg.s_churn, s_noise=cfg.s_noise, s_tmin=cfg.s_tmin,
                   s_tmax=math.inf if cfg.s_tmax is None else cfg.s_tmax, cfg_scale=cfg.cfg_scale,
                   cfg_scale_start=cfg.cfg_scale_start, linear_cfg=cfg.linear_cfg, control_scale=cfg.control_scale,
                   control_scale_start=cfg.control_scale_start, linear_control_scale=cfg.linear_control_scale,
                   guidance_min_sigma=cfg.guidance_min_sigma)


@dataclass
class StepRecord:
    """What one step saw; handed to ``on_step`` (tests and previews)."""

    index: int
    sigma: float
    sigma_hat: float
    x0: torch.Tensor  # after CFG and restoration guidance
    cfg_scale: float
    control_scale: float
    guidance_weight: float  # 0 when guidance did not apply


class RestoreEDMSampler:
    def __init__(self, schedule: SigmaSchedule, settings: SamplerSettings):
        self.schedule = schedule
        self.settings = settings
        self.sigma_max = schedule.sigma_max

    # ------------------------------------------------------------------ pieces
    def sigmas(self) -> torch.Tensor:
        return self.schedule.grid(self.settings.num_steps)

    def initial_latent(self, shape, generator: torch.Generator, device=None) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, device=device or "cpu", dtype=torch.float32)
        return noise * math.sqrt(1.0 + float(self.sigmas()[0]) ** 2)

    def gamma(self, sigma: float) -> float:
        s = self.settings
        if s.s_tmin <= sigma <= s.s_tmax:
            return min(s.s_churn / s.num_steps, 2 ** 0.5 - 1)
        return 0.0

    def cfg_scale(self, sigma_hat: float) -> float:
        s = self.settings
        if not s.linear_cfg:
            return s.cfg_scale
        return (s.cfg_scale_start - s.cfg_scale) * sigma_hat / self.sigma_max + s.cfg_scale

    def control_scale(self, sigma: float) -> float:
        s = self.settings
        if not s.linear_control_scale:
            return s.control_scale
        return (sigma / self.sigma_max) * (s.control_scale_start - s.control_scale) + s.control_scale

    def denoise(self, eps_fn: EpsFn, x, sigma_hat: float, cond: Conditioning, uncond: Optional[Conditioning],
                control_scale: float) -> torch.Tensor:
        """CFG-combined x0 prediction of the discrete eps denoiser at ``sigma_hat``."""
        idx = self.schedule.to_index(torch.tensor([sigma_hat]))
        sigma_q = float(self.schedule.sigmas[idx])
        c_in = 1.0 / math.sqrt(sigma_q ** 2 + 1.0)
        if uncond is None:
            t = idx.to(x.device).expand(x.shape[0])
            return x - sigma_q * eps_fn(x * c_in, t, cond, control_scale)
        x2 = torch.cat([x, x])
        t = idx.to(x.device).expand(x2.shape[0])
        eps_u, eps_c = eps_fn(x2 * c_in, t, Conditioning.cat(uncond, cond), control_scale).chunk(2)
        x0_u, x0_c = x - sigma_q * eps_u, x - sigma_q * eps_c
        return x0_u + self.cfg_scale(sigma_hat) * (x0_c - x0_u)

    def step(self, eps_fn: EpsFn, x, i: int, sigmas, cond, uncond, x_center, eps_noise, on_step=None):
        s = self.settings
        sigma, next_sigma = float(sigmas[i]), float(sigmas[i + 1])
        gamma = self.gamma(sigma)
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            x = x + eps_noise * s.s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2)
        cs = self.control_scale(sigma)
        x0 = self.denoise(eps_fn, x, sigma_hat, cond, uncond, cs)
        weight = 0.0
        if s.tau_r is not None and next_sigma > s.guidance_min_sigma:
            weight = (sigma / self.sigma_max) ** s.tau_r
            # lerp is exact at both ends: weight 1 gives x_center itself.
            x0 = torch.lerp(x0, x_center.to(x0.dtype), weight)
        if on_step is not None:
            on_step(StepRecord(i, sigma, sigma_hat, x0, self.cfg_scale(sigma_hat) if uncond is not None else 1.0,
                               cs, weight))
        d = (x - x0) / sigma_hat
        return x + (next_sigma - sigma_hat) * d

    # ------------------------------------------------------------------ loops
    @torch.no_grad()
    def sample(self, eps_fn: EpsFn, x, cond: Conditioning, uncond: Optional[Conditioning], x_center=None,
               generator: Optional[torch.Generator] = None, on_step=None, on_progress=None) -> torch.Tensor:
        """Denoise ``x`` (from ``initial_latent``) over the whole latent at once. ``on_progress(done, total)``
        is called after every step (progress display)."""
        self._check_guidance(x_center)
        sigmas = self.sigmas()
        for i in range(len(sigmas) - 1):
            eps_noise = _noise_like(x, generator)
            x = self.step(eps_fn, x, i, sigmas, cond, uncond, x_center, eps_noise, on_step)
            if on_progress is not None:
                on_progress(i + 1, len(sigmas) - 1)
        return x

    @torch.no_grad()
    def sample_tiled(self, eps_fn: EpsFn, x, cond: Conditioning, uncond: Optional[Conditioning], x_center=None,
                     generator: Optional[torch.Generator] = None, tile_size: int = 128, tile_stride: int = 64,
                     on_step=None, weights: str = "official", on_progress=None) -> torch.Tensor:
        """Official ``TiledRestoreEDMSampler``: each step runs per latent tile (own control and x_center
        slices, one global noise field sliced per tile) and blends tiles with Gaussian weights."""
        from supirkit.model.tiling import gaussian_weights, sliding_windows

        self._check_guidance(x_center)
        sigmas = self.sigmas()
        h, w = x.shape[-2:]
        windows = sliding_windows(h, w, tile_size, tile_stride)
        th, tw = windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]
        blend = gaussian_weights(th, tw, centre=weights).to(x.device, x.dtype)
        for i in range(len(sigmas) - 1):
            eps_noise = _noise_like(x, generator)
            if len(windows) == 1:  # the image fits in one tile: no blending, identical to `sample`
                x = self.step(eps_fn, x, i, sigmas, cond, uncond, x_center, eps_noise, on_step)
            else:
                x = self._tiled_step(eps_fn, x, i, sigmas, cond, uncond, x_center, eps_noise, windows, blend)
            if on_progress is not None:
                on_progress(i + 1, len(sigmas) - 1)
        return x

    def _tiled_step(self, eps_fn, x, i, sigmas, cond, uncond, x_center, eps_noise, windows, weights):
        """One step over every latent tile, blended with Gaussian weights."""
        x_next = torch.zeros_like(x)
        count = torch.zeros_like(x)
        for h0, h1, w0, w1 in windows:
            sl = (slice(None), slice(None), slice(h0, h1), slice(w0, w1))
            tile_cond = cond.with_control(cond.control[sl])
            tile_uncond = uncond.with_control(uncond.control[sl]) if uncond is not None else None
            center = x_center[sl] if x_center is not None else None
            out = self.step(eps_fn, x[sl], i, sigmas, tile_cond, tile_uncond, center, eps_noise[sl])
            x_next[sl] += out * weights
            count[sl] += weights
        return x_next / count

    def _check_guidance(self, x_center):
        if self.settings.tau_r is not None and x_center is None:
            raise ValueError("restoration guidance (tau_r) needs x_center, the LQ latent to pull toward")


def _noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)
