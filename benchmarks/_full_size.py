"""Full-size models with random weights, built from their configs (no download), for the GPU benchmarks and
``gpu_check.py``; the same builders at tiny size (the tiny models' configs) for the CPU checks of those paths.

* LLaVA-1.5-13B: ``llava_config`` / ``llava_folder`` (config.json + processor, no weights) / ``build_llava``;
* SDXL base 1.0: ``build_sdxl`` (UNet and VAE from ``configs/model``, the two CLIP text encoders' published
  sizes, checked by parameter count), ``save_sdxl_pipeline`` (a diffusers folder ``from_pretrained`` loads);
* the SUPIR adaptor training step: ``TrainingStep`` (build once, measure at several batch sizes, with and
  without gradient checkpointing, under any ``RuntimeOptions``).
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ LLaVA

#: llava-hf/llava-1.5-13b-hf's architecture: CLIP ViT-L/14-336 tower, 2-layer GELU projector, Llama-13B.
LLAVA_15_13B = {
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14, projection_dim=768),
    "text": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                 num_key_value_heads=40),
}
#: The same layout at the tiny LLaVA's sizes (supirkit.tiny.llava): 56-px images, 16 image tokens.
LLAVA_TINY = {
    "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                   image_size=56, patch_size=14, projection_dim=32),
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4),
}


def llava_config(shape: dict, image_token_id: int, pad_token_id: int, bos: int, eos: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **shape["vision"])
    text = LlamaConfig(vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=bos,
                       eos_token_id=eos, pad_token_id=pad_token_id, **shape["text"])
    tokens = (shape["vision"]["image_size"] // shape["vision"]["patch_size"]) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=tokens, projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    config.pad_token_id = pad_token_id
    return config


def llava_folder(folder: Path, shape: dict = LLAVA_15_13B):
    """config.json + processor (CLIP image processor at the tower's size, the tiny tokenizer, llava-1.5 chat
    template), no weights: vLLM loads it with load_format='dummy'; transformers builds the model from the
    config. The tiny tokenizer stands in for LLaVA's: token ids only feed random embeddings."""
    from transformers import CLIPImageProcessor, GenerationConfig, LlavaProcessor

    from supirkit.tiny.llava import CLIP_MEAN, CLIP_STD, LLAVA_15_CHAT_TEMPLATE, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = llava_config(shape, tok.convert_tokens_to_ids("<image>"), tok.pad_token_id, tok.bos_token_id,
                          tok.eos_token_id)
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "bfloat16"
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(folder)
    side = shape["vision"]["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                         resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=shape["vision"]["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_15_CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return config, processor


def build_llava(config, device, dtype):
    """Random weights, built directly on ``device`` in ``dtype``, SDPA attention."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


# ------------------------------------------------------------------------------------------------- SDXL

#: SDXL base 1.0's two text encoders (text_encoder/, text_encoder_2/ config.json): CLIP ViT-L/14 and OpenCLIP
#: ViT-bigG/14 text towers. Only their sizes matter here (random weights); checked by parameter count below.
SDXL_TEXT_ENCODERS = (
    dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
         max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
         max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
)
SDXL_TEXT_ENCODER_PARAMS = (123_060_480, 694_659_840)
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "max_position_embeddings", "hidden_act", "projection_dim")


@dataclass
class SDXLConfigs:
    unet: dict
    vae: dict
    text: tuple

    @classmethod
    def full(cls) -> "SDXLConfigs":
        from supirkit.model.config import load_model_config, read_json_config

        m = load_model_config()
        return cls(read_json_config(m.sdxl.unet_config), read_json_config(m.sdxl.vae_config), SDXL_TEXT_ENCODERS)

    @classmethod
    def from_folder(cls, folder: Path) -> "SDXLConfigs":
        """The configs of a saved pipeline (the tiny SDXL of supirkit.tiny.sdxl, for the CPU checks)."""
        def read(sub):
            return {k: v for k, v in json.loads((Path(folder) / sub / "config.json").read_text()).items()
                    if not k.startswith("_")}

        text = tuple({k: read(sub)[k] for k in _TEXT_KEYS} for sub in ("text_encoder", "text_encoder_2"))
        return cls(read("unet"), read("vae"), text)


@dataclass
class SDXLParts:
    unet: object
    vae: object
    text_encoder: object
    text_encoder_2: object

    def parameters(self) -> dict:
        return {name: sum(p.numel() for p in getattr(self, name).parameters())
                for name in ("unet", "vae", "text_encoder", "text_encoder_2")}


def build_sdxl(device, configs: SDXLConfigs | None = None, dtype=None, token_ids=None) -> SDXLParts:
    """SDXL's UNet, VAE and text encoders with random weights, built on ``device`` (``meta``: shapes only).
    ``token_ids``: (bos, eos) of the tokenizer that will feed the text encoders."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = configs or SDXLConfigs.full()
    ids = {} if token_ids is None else {"bos_token_id": token_ids[0], "eos_token_id": token_ids[1], "pad_token_id": 1}
    torch.manual_seed(0)
    with torch.device(device):
        parts = SDXLParts(UNet2DConditionModel.from_config(configs.unet), AutoencoderKL.from_config(configs.vae),
                          CLIPTextModel(CLIPTextConfig(**configs.text[0], **ids)),
                          CLIPTextModelWithProjection(CLIPTextConfig(**configs.text[1], **ids)))
    unet, te1, te2 = parts.unet, parts.text_encoder, parts.text_encoder_2
    assert unet.config.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert unet.config.projection_class_embeddings_input_dim == 6 * unet.config.addition_time_embed_dim + \
        te2.config.projection_dim
    counts = parts.parameters()
    text_counts = (counts["text_encoder"], counts["text_encoder_2"])
    if configs.text is SDXL_TEXT_ENCODERS and text_counts != SDXL_TEXT_ENCODER_PARAMS:
        raise RuntimeError(f"text encoder sizes {counts} differ from SDXL's {SDXL_TEXT_ENCODER_PARAMS}")
    if dtype is not None:
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            setattr(parts, name, getattr(parts, name).to(dtype))
    return parts


def save_sdxl_pipeline(parts: SDXLParts, tokenizers_from: Path, out_dir: Path, dtype) -> Path:
    """A diffusers SDXL folder (fp16 safetensors) of ``parts``, with the tokenizers of ``tokenizers_from``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from supirkit.tiny.sdxl import SDXL_SCHEDULER_CONFIG

    pipe = StableDiffusionXLPipeline(vae=parts.vae, text_encoder=parts.text_encoder,
                                     text_encoder_2=parts.text_encoder_2, unet=parts.unet,
                                     tokenizer=CLIPTokenizer.from_pretrained(str(tokenizers_from / "tokenizer")),
                                     tokenizer_2=CLIPTokenizer.from_pretrained(str(tokenizers_from / "tokenizer_2")),
                                     scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG))
    pipe.to(dtype).save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def tokenizer_ids(tokenizers_from: Path) -> tuple[int, int]:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizers_from / "tokenizer"))
    return tok.bos_token_id, tok.eos_token_id


def release(device) -> None:
    import torch

    gc.collect()
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------- training step

class TrainingStep:
    """The adaptor training step on models built from configs (random weights): the trainer's
    ``AdaptorObjective.loss`` plus the optimizer part of the loop. Frozen VAE, DR encoder and text encoders in
    bf16 under ``no_grad``; the SUPIR model with the UNet in bf16 and the adaptor in fp32 under bf16 autocast;
    MSE on the epsilon prediction, clipping at 1.0, AdamW, EMA. Inputs are uint8 images moved to the device
    each step, as the loader delivers them. Built once; ``measure`` runs it at any batch size."""

    def __init__(self, device, layout="selected", configs: SDXLConfigs | None = None, options=None, label=None):
        import torch

        from supirkit.model.config import load_model_config
        from supirkit.model.dr_encoder import DegradationRobustEncoder
        from supirkit.model.runtime import RuntimeOptions, apply_runtime_options
        from supirkit.model.supir import SUPIRModel, move_to
        from supirkit.train.ema import EMAModel

        mcfg = load_model_config()
        if layout == "selected":
            layout = mcfg.trunk.layout
        named = isinstance(layout, str) and layout in mcfg.trunk.layouts
        self.layout = label or (layout if named else str(layout))
        trunk = mcfg.trunk.layouts[layout] if named else layout  # a TrunkLayoutConfig, a dict, or None (full copy)
        self.device, self.bf16 = device, torch.bfloat16
        parts = build_sdxl(device, configs, dtype=torch.bfloat16)
        self.vae, self.text = parts.vae, [parts.text_encoder, parts.text_encoder_2]
        self.vocab = self.text[0].config.vocab_size
        for m in (self.vae, *self.text):
            m.requires_grad_(False).eval()
        self.dr = DegradationRobustEncoder.from_vae(self.vae).requires_grad_(False).eval()
        self.model = SUPIRModel.from_unet(parts.unet, trunk, sft_hidden_channels=mcfg.connectors.sft_hidden_channels,
                                          cross_attn_head_dim=mcfg.connectors.cross_attn_head_dim, dr_encoder=self.dr,
                                          control_scale=mcfg.control_scale)
        self.model.unet.eval()
        move_to(self.model.adaptor, device, torch.float32).train().requires_grad_(True)
        self.params = list(self.model.trainable_parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, weight_decay=1e-2)
        self.ema = EMAModel(self.params, 0.9999)
        from diffusers import EulerDiscreteScheduler

        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000)  # SDXL's scheduler/scheduler_config.json
        self.alphas = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.scaling = float(self.vae.config.scaling_factor)
        self.steps_done = 0
        self.options = options or RuntimeOptions()
        apply_runtime_options(self.options, self.model, self.vae, device)
        self.checkpointing(True)

    def apply(self, options) -> None:
        from supirkit.model.runtime import apply_runtime_options

        self.options = options
        apply_runtime_options(options, self.model, self.vae, self.device)

    def checkpointing(self, on: bool) -> None:
        (self.model.enable_gradient_checkpointing if on else self.model.disable_gradient_checkpointing)()

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def _inputs(self, batch: int, px: int):
        import torch

        g = torch.Generator().manual_seed(batch)
        return (torch.randint(0, 256, (batch, 3, px, px), generator=g, dtype=torch.uint8),
                torch.randint(0, 256, (batch, 3, px, px), generator=g, dtype=torch.uint8),
                torch.randint(0, self.vocab, (batch, 77), generator=g),
                torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch))

    def step(self, inputs):
        import torch
        import torch.nn.functional as F

        from supirkit.train.data import to_model_range

        hq_u8, lq_u8, ids, time_ids = inputs
        device, bf16, batch = self.device, self.bf16, hq_u8.shape[0]
        self.steps_done += 1
        with torch.no_grad():
            hq, lq = to_model_range(hq_u8, device, bf16), to_model_range(lq_u8, device, bf16)
            post = self.vae.encode(hq).latent_dist
            z0 = (post.mean + post.std * torch.randn_like(post.mean)).float() * self.scaling
            zlq = self.dr.latent(lq, self.vae).float()
            tok = ids.to(device)
            h1 = self.text[0](tok, output_hidden_states=True).hidden_states[-2]
            out2 = self.text[1](tok, output_hidden_states=True)
            embeds, pooled = torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds
        t = torch.randint(0, 1000, (batch,), device=device)
        eps = torch.randn_like(z0)
        a = self.alphas[t].view(batch, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with torch.autocast(device.type, dtype=bf16):
            eps_hat = self.model(x_t, t, embeds, {"text_embeds": pooled, "time_ids": time_ids.to(device)}, zlq)
        loss = F.mse_loss(eps_hat.float(), eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.steps_done)
        return loss

    def measure(self, batch: int, steps: int, warmup: int, px: int = 512) -> dict:
        """Median seconds per step over ``steps`` after ``warmup``; samples/s; peak memory (CUDA). An
        out-of-memory batch returns ``{"oom": True}`` and leaves the step usable for smaller batches."""
        import torch

        cuda = self.device.type == "cuda"
        inputs = self._inputs(batch, px)
        try:
            for _ in range(warmup):
                self.step(inputs)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                loss = self.step(inputs)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            release(self.device)
            return {"batch": batch, "oom": True}
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {float(loss)} in the training step")
        times.sort()
        median = times[len(times) // 2]
        return {"batch": batch, "px": px, "steps": steps, "median_s_per_step": median, "min_s_per_step": times[0],
                "samples_per_s": batch / median, "checkpointing": self.model.gradient_checkpointing,
                "peak_gib": torch.cuda.max_memory_allocated(self.device) / 2 ** 30 if cuda else None}

    def close(self) -> None:
        del self.model, self.vae, self.dr, self.text, self.optimizer, self.ema, self.params
        release(self.device)
