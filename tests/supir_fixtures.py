"""Helpers shared by the SUPIR model, sampler and restore tests (tiny SDXL, CPU)."""
from __future__ import annotations

from pathlib import Path

import pytest
from model_fixtures import tiny_sdxl_dir  # noqa: F401  (session fixture, re-exported)


def load_unet(sdxl_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(sdxl_dir, subfolder="unet").eval()


def unet_inputs(unet, batch: int = 2, size=(8, 8), seed: int = 0):
    """(sample, timestep, encoder_hidden_states, added_cond_kwargs, lq_latent) matching the UNet's config."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    sample = torch.randn(batch, 4, *size, generator=g)
    t = torch.tensor([999, 421][:batch] + [7] * max(0, batch - 2))
    ctx = torch.randn(batch, 77, c.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(batch, pooled, generator=g),
             "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch)}
    lq = torch.randn(batch, 4, *size, generator=g)
    return sample, t, ctx, added, lq


def perturb(module, seed: int = 1, std: float = 0.02):
    """Move every parameter off its initial value (zero convs included), deterministically."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def trained_like_model(sdxl_dir, seed: int = 1, layout=None, with_dr: bool = True):
    """A SUPIRModel on the tiny SDXL whose adaptor (and DR encoder) no longer sit at their initialisation,
    so the control path visibly changes the output."""
    from diffusers import AutoencoderKL

    from supirkit.model.dr_encoder import DegradationRobustEncoder
    from supirkit.model.supir import SUPIRModel

    unet = load_unet(sdxl_dir)
    dr = None
    if with_dr:
        vae = AutoencoderKL.from_pretrained(sdxl_dir, subfolder="vae")
        dr = perturb(DegradationRobustEncoder.from_vae(vae), seed=seed + 100, std=0.005)
    model = SUPIRModel.from_unet(unet, layout, dr_encoder=dr)
    perturb(model.adaptor, seed=seed)
    return model.eval()


@pytest.fixture(scope="session")
def adaptor_dir(tiny_sdxl_dir, tmp_path_factory) -> Path:
    """An adaptor folder (config.json + safetensors + dr_encoder/) for the tiny SDXL."""
    model = trained_like_model(tiny_sdxl_dir)
    return model.save_adaptor(tmp_path_factory.mktemp("adaptor"))


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a loaded 2-core machine
    oversubscribed OpenMP threads make each forward tens of times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
