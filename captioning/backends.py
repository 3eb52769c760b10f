"""Captioning backends behind one interface: transformers ``generate`` (default) and vLLM (optional).

A backend is built once per worker (one model replica per Ray actor) and turns a batch of PIL images into
``Generation`` records. Both render the prompt with the checkpoint's own chat template (through its
processor) so that a LLaVA-1.5 and a LLaVA-NeXT checkpoint each get the format they were trained on.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from supirkit.captioning.config import CaptionConfig, CaptionModelConfig, CaptionPromptConfig, GenerationConfig
from supirkit.datapipe.devices import resolve_device, resolve_dtype
from supirkit.datapipe.errors import ConfigError

log = logging.getLogger("supirkit")

#: model_type -> class used when a config names no architecture. The class a config names wins.
SUPPORTED_MODEL_TYPES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
}


class BackendError(RuntimeError):
    """The model cannot be used as configured (unsupported checkpoint, GPU-only option on CPU, ...)."""


@dataclass
class Generation:
    raw: str  # decoded text, special tokens removed, otherwise untouched
    new_tokens: int  # generated tokens, not counting the end-of-sequence token
    finished: bool  # ended with end-of-sequence (False: cut at max_new_tokens)


def _no_timer(_name: str):
    return contextlib.nullcontext()


def render_prompt(processor, prompt: CaptionPromptConfig) -> str:
    """The text the model sees before generating, with one image placeholder."""
    image_token = getattr(processor, "image_token", "<image>")
    if prompt.template is not None:
        return prompt.template.format(system=prompt.system or "", instruction=prompt.instruction, image=image_token)
    if getattr(processor, "chat_template", None) is None:
        raise BackendError("the checkpoint's processor has no chat template; set prompt.template")
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.instruction}]}
    if prompt.system:
        system = {"role": "system", "content": [{"type": "text", "text": prompt.system}]}
        try:
            return processor.apply_chat_template([system, user], add_generation_prompt=True)
        except Exception as exc:  # some templates refuse a system turn: say so, go on without it
            log.warning("caption: chat template refuses a system message (%s); using none", exc)
    return processor.apply_chat_template([user], add_generation_prompt=True)


def pad_colour(processor) -> tuple[int, int, int]:
    """LLaVA's expand2square colour: the image processor's mean, in 0..255."""
    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or (
        0.48145466,
        0.4578275,
        0.40821073,
    )
    return tuple(int(x * 255) for x in mean[:3])


def resolve_device_and_dtype(model_cfg: CaptionModelConfig):
    """(device, torch dtype) of the captioner: LLaVA runs in bfloat16 where the GPU has it, else float16."""
    try:
        device = resolve_device(model_cfg.device)
    except ConfigError as exc:
        raise BackendError(f"model.{exc}") from None
    return device, resolve_dtype(model_cfg.dtype, device, gpu_default="bfloat16_if_supported")


def generation_settings(gen: GenerationConfig) -> dict:
    """What is recorded in every caption's metadata (and passed to generate)."""
    out = {"do_sample": gen.do_sample, "num_beams": gen.num_beams, "max_new_tokens": gen.max_new_tokens,
           "min_new_tokens": gen.min_new_tokens, "repetition_penalty": gen.repetition_penalty, "seed": gen.seed}
    if gen.do_sample:
        out.update(temperature=gen.temperature, top_p=gen.top_p)
    return out


class TransformersCaptioner:
    """LLaVA-1.5 / LLaVA-NeXT through transformers: batched ``generate`` with left padding."""

    backend = "transformers"

    def __init__(self, model_cfg: CaptionModelConfig, prompt: CaptionPromptConfig, gen: GenerationConfig,
                 model=None, processor=None) -> None:
        import torch

        self.model_cfg, self.gen = model_cfg, gen
        self.device, self.dtype = resolve_device_and_dtype(model_cfg)
        if model_cfg.cpu_threads and self.device == "cpu":
            torch.set_num_threads(model_cfg.cpu_threads)
        self.processor = processor if processor is not None else self._load_processor()
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues from the right end of every row
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.model = model if model is not None else self._load_model()
        self.model.eval()
        self.prompt_text = render_prompt(self.processor, prompt)
        self.pad_colour = pad_colour(self.processor)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos])

    # ----------------------------------------------------------------------------------------- loading
    def _load_processor(self):
        from transformers import AutoProcessor

        cfg = self.model_cfg
        return AutoProcessor.from_pretrained(cfg.name, revision=cfg.revision, trust_remote_code=False)

    def _model_class(self):
        import transformers
        from transformers import AutoConfig

        cfg = self.model_cfg
        config = AutoConfig.from_pretrained(cfg.name, revision=cfg.revision, trust_remote_code=False)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise BackendError(f"{cfg.name}: model_type {config.model_type!r} is not a LLaVA-1.5 or LLaVA-NeXT "
                               f"checkpoint (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        names = list(config.architectures or []) or [SUPPORTED_MODEL_TYPES[config.model_type]]
        cls = getattr(transformers, names[0], None)  # only transformers' own classes: no remote code
        if cls is None:
            raise BackendError(f"{cfg.name}: config names class {names[0]!r}, which transformers does not have")
        return cls

    def _load_model(self):
        cfg = self.model_cfg
        cls = self._model_class()
        kwargs = dict(revision=cfg.revision, dtype=self.dtype, trust_remote_code=False)
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if cfg.quantization != "none":
            if not self.device.startswith("cuda"):
                raise BackendError(f"model.quantization {cfg.quantization} needs a CUDA GPU (bitsandbytes)")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True) if cfg.quantization == "8bit" else
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=self.dtype))
        if self.device.startswith("cuda"):
            kwargs["device_map"] = {"": self.device}
        model = cls.from_pretrained(cfg.name, **kwargs)
        if not self.device.startswith("cuda"):
            model.to(self.device)
        return model

    # ----------------------------------------------------------------------------------------- captioning
    def describe(self) -> dict:
        return {"model": self.model_cfg.name, "revision": self.model_cfg.revision, "backend": self.backend,
                "dtype": str(self.dtype).replace("torch.", ""), "quantization": self.model_cfg.quantization,
                "class": type(self.model).__name__}

    def caption(self, images: Sequence, seed: int, timer: Callable = _no_timer) -> list[Generation]:
        import torch

        with timer("preprocess"):
            inputs = self.processor(images=list(images), text=[self.prompt_text] * len(images),
                                    return_tensors="pt", padding=True)
            inputs = inputs.to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        kwargs = generation_settings(self.gen)
        kwargs.pop("seed")
        torch.manual_seed(seed)
        with timer("generate"), torch.inference_mode():
            out = self.model.generate(**inputs, pad_token_id=self.processor.tokenizer.pad_token_id, **kwargs)
        with timer("decode_text"):
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            results = []
            for row in new:
                end = next((i for i, t in enumerate(row) if t in self._eos), None)
                ids = row if end is None else row[:end]
                text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
                results.append(Generation(text.strip(), len(ids), end is not None))
        return results


class VLLMCaptioner:
    """The same interface on vLLM (continuous batching, paged KV cache). GPU only; install ``vllm``."""

    backend = "vllm"

    def __init__(self, model_cfg: CaptionModelConfig, prompt: CaptionPromptConfig, gen: GenerationConfig,
                 engine_overrides: Optional[dict] = None, processor=None) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise BackendError("model.backend vllm needs the vllm package (pip install 'supirkit[vllm]')") from None
        if gen.num_beams != 1:
            raise BackendError("model.backend vllm samples one sequence per image: set generation.num_beams 1")
        if model_cfg.quantization == "8bit":
            raise BackendError("vLLM quantizes in flight to 4-bit only: use quantization 4bit or backend transformers")
        from transformers import AutoProcessor

        self.model_cfg, self.gen = model_cfg, gen
        self.processor = processor if processor is not None else AutoProcessor.from_pretrained(
            model_cfg.name, revision=model_cfg.revision, trust_remote_code=False)
        self.prompt_text = render_prompt(self.processor, prompt)
        self.pad_colour = pad_colour(self.processor)
        self._eos_id = self.processor.tokenizer.eos_token_id
        kwargs = dict(model=model_cfg.name, revision=model_cfg.revision, trust_remote_code=False,
                      dtype=model_cfg.dtype, max_model_len=model_cfg.max_model_len,
                      gpu_memory_utilization=model_cfg.gpu_memory_utilization, max_num_seqs=model_cfg.max_num_seqs,
                      enforce_eager=model_cfg.enforce_eager, limit_mm_per_prompt={"image": 1}, seed=gen.seed)
        if model_cfg.quantization == "4bit":
            kwargs["quantization"] = "bitsandbytes"
        kwargs.update(engine_overrides or {})
        self.llm = LLM(**kwargs)

    def describe(self) -> dict:
        return {"model": self.model_cfg.name, "revision": self.model_cfg.revision, "backend": self.backend,
                "dtype": self.model_cfg.dtype, "quantization": self.model_cfg.quantization, "class": "vllm.LLM"}

    def caption(self, images: Sequence, seed: int, timer: Callable = _no_timer) -> list[Generation]:
        from vllm import SamplingParams

        gen = self.gen
        params = [SamplingParams(n=1, temperature=gen.temperature if gen.do_sample else 0.0,
                                 top_p=gen.top_p if gen.do_sample else 1.0, max_tokens=gen.max_new_tokens,
                                 min_tokens=gen.min_new_tokens, repetition_penalty=gen.repetition_penalty,
                                 seed=seed + i, skip_special_tokens=True)
                  for i in range(len(images))]
        requests = [{"prompt": self.prompt_text, "multi_modal_data": {"image": im}} for im in images]
        with timer("generate"):
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for o in outputs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            if ids and ids[-1] == self._eos_id:  # vLLM keeps the end token in token_ids
                ids = ids[:-1]
            results.append(Generation(c.text.strip(), len(ids), c.finish_reason == "stop"))
        return results


def load_backend(cfg: CaptionConfig):
    """The configured backend, model loaded (call once per worker)."""
    if cfg.model.backend == "vllm":
        return VLLMCaptioner(cfg.model, cfg.prompt, cfg.generation)
    return TransformersCaptioner(cfg.model, cfg.prompt, cfg.generation)
