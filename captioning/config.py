"""The caption job's configuration: every setting lives in ``configs/caption/*.yaml`` and is validated here.

Defaults follow SUPIR's captioner (``llava/llava_agent.py``): LLaVA-1.5-13B, the vicuna_v1 system line, the
instruction "Describe this image and its style in a very detailed manner.", sampling with temperature 0.2
and top_p 0.7, one beam, up to 512 new tokens.
"""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from supirkit.datapipe.config import DecodingJobConfig, OutputConfig, Schema
from supirkit.datapipe.devices import Device, DType

DEFAULT_MODEL = "llava-hf/llava-1.5-13b-hf"
SUPIR_INSTRUCTION = "Describe this image and its style in a very detailed manner."
#: The vicuna_v1 conversation's system line that SUPIR's LLaVA agent puts before "USER:".
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

#: Openings that say nothing about the image; removed from the start of a caption (case-insensitive regexes).
DEFAULT_OPENINGS = [
    r"(?:in|within) (?:this|the) (?:image|picture|photo|photograph|scene|shot)\s*[,:]?",
    r"(?:this|the) (?:image|picture|photo|photograph|scene|shot) (?:shows|depicts|features|displays|captures|"
    r"presents|portrays|showcases|illustrates|contains|highlights|is of|is showing)(?: us)?\s*:?",
    r"(?:this|the) (?:image|picture|photo|photograph) is (?:an? )?(?:image|picture|photo|photograph|close-up) of",
    r"(?:this is|here is|here's) (?:an? )?(?:image|picture|photo|photograph) (?:of|showing|that shows)",
    r"(?:the|this) (?:image|picture|photo|photograph) (?:appears to (?:be|show)|seems to (?:be|show))",
]


class CaptionModelConfig(Schema):
    name: str = Field(DEFAULT_MODEL, min_length=1,
                      description="Hub id or local folder of a LLaVA-1.5 / LLaVA-NeXT checkpoint (llava-hf format).")
    revision: Optional[str] = None
    backend: Literal["transformers", "vllm"] = "transformers"
    dtype: DType = Field(
        "auto", description="auto: bfloat16 on a GPU that supports it, else float16 on GPU, float32 on CPU.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes 8-bit or 4-bit (NF4) weights; GPU only.")
    device: Device = Field("auto", description="auto: the GPU Ray gave this actor, else CPU.")
    attn_implementation: Optional[Literal["sdpa", "eager", "flash_attention_2"]] = "sdpa"
    cpu_threads: Optional[int] = Field(None, ge=1, description="torch threads on CPU (None: torch's default).")
    # vLLM engine settings (backend: vllm)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int = Field(4096, ge=256)
    max_num_seqs: int = Field(256, ge=1)
    enforce_eager: bool = False


class CaptionPromptConfig(Schema):
    instruction: str = Field(SUPIR_INSTRUCTION, min_length=1)
    system: Optional[str] = Field(VICUNA_SYSTEM, description="System line before the user turn; null for none.")
    template: Optional[str] = Field(
        None, description="Override of the checkpoint's chat template as a format string with {system}, "
                          "{instruction} and {image} (the processor's image token); null: the checkpoint's own.")

    @field_validator("template")
    @classmethod
    def _has_fields(cls, v):
        if v is not None and ("{instruction}" not in v or "{image}" not in v):
            raise ValueError("template must contain {instruction} and {image}")
        return v


class GenerationConfig(Schema):
    do_sample: bool = True
    temperature: float = Field(0.2, gt=0, le=5)
    top_p: float = Field(0.7, gt=0, le=1)
    num_beams: int = Field(1, ge=1, le=8)
    max_new_tokens: int = Field(512, ge=1, le=8192)
    min_new_tokens: int = Field(0, ge=0, le=8192)
    repetition_penalty: float = Field(1.0, gt=0, le=3)
    seed: int = Field(0, ge=0, description="Sampling seed; each batch's seed is derived from it and its position.")

    @model_validator(mode="after")
    def _min_le_max(self):
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self


class CaptionImageConfig(Schema):
    use: Literal["curated", "source"] = Field(
        "curated", description="curated: the sample's own (training) image; source: the original named by the "
                               "sample json's 'source' (whole original, not the crop).")
    fit: Literal["pad", "crop", "none"] = Field(
        "pad", description="pad: to a square with the processor's mean colour, as LLaVA-1.5 was trained; "
                           "crop: centre square; none: as is (the processor's own resize/crop applies).")
    max_side: Optional[int] = Field(
        672, ge=64, description="Downscale (Lanczos) so the long side is at most this before the processor; "
                                "672 keeps LLaVA-NeXT's largest tile grid exact. null: never.")


class CleanConfig(Schema):
    strip_openings: bool = True
    openings: list[str] = Field(default_factory=lambda: list(DEFAULT_OPENINGS))
    capitalize: bool = Field(True, description="Upper-case the first letter after an opening was removed.")

    @field_validator("openings")
    @classmethod
    def _compiles(cls, v):
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"opening {pattern!r} is not a valid regex: {exc}") from None
        return v


class TokenConfig(Schema):
    tokenizer: Optional[str] = Field(
        "openai/clip-vit-large-patch14",
        description="CLIP tokenizer used to count caption tokens: an SDXL folder (its tokenizer/), a tokenizer "
                    "folder or a cached hub id. null or not loadable: see on_missing.")
    limit: int = Field(77, ge=3, description="Context of SDXL's text encoders, including <start> and <end>.")
    on_missing: Literal["estimate", "error"] = Field(
        "estimate", description="estimate: count words and punctuation marks (labelled 'estimate', not exact).")
    warn_share: float = Field(0.5, ge=0, le=1, description="Warn when more than this share exceed the limit.")


class CaptionBatchingConfig(Schema):
    batch_size: int = Field(8, ge=1, le=1024)
    prefetch_batches: int = Field(2, ge=0, le=16, description="Batches read and decoded ahead of generation.")
    on_failure: Literal["drop", "keep"] = Field(
        "drop", description="A sample that cannot be captioned: drop it (recorded), or keep it uncaptioned.")


class TaggerConfig(Schema):
    """Tag prompts, SeeSR's kind of prompt: a list of the things in the image (``captioning.tags``)."""

    model: Optional[str] = Field(None, description="null: no tags. clip: an open_clip name or a folder with one "
                                 "open_clip config .json (+ .safetensors); classifier: a transformers "
                                 "image-classification checkpoint (id or folder)")
    backend: Literal["clip", "classifier"] = Field("clip", description="clip: zero-shot over the vocabulary; "
                                                   "classifier: the checkpoint's own labels")
    weights: Optional[str] = Field(None, description="clip: open_clip weights file or pretrained tag")
    vocabulary: Optional[str] = Field(None, description="text file, one tag per line (clip: required; "
                                      "classifier: keeps only these labels)")
    template: str = Field("a photo of a {}.", description="clip: the text each tag is embedded in")
    top_k: int = Field(8, ge=1, le=200, description="at most this many tags per image, most likely first")
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="minimum probability of a kept tag (clip: softmax "
                             "over the vocabulary; classifier: sigmoid for multi-label checkpoints, else softmax)")
    batch_size: int = Field(32, ge=1)
    device: Device = Field("auto", description="auto: cuda when available, else cpu")

    @field_validator("template")
    @classmethod
    def _one_slot(cls, v):
        if "{}" not in v:
            raise ValueError("template must contain {} where the tag goes")
        return v


class CaptionOutputConfig(OutputConfig):
    write: Literal["table", "shards"] = Field(
        "table", description="table: one caption table per input shard, keyed by sample key (a caption set: the "
        "training loader, inspect and shard --from-manifest join it to the input shards); shards: rewrite every "
        "shard with .txt members (self-contained tars, a copy of the corpus)")


class CaptionConfig(DecodingJobConfig):
    model: CaptionModelConfig = CaptionModelConfig()
    prompt: CaptionPromptConfig = CaptionPromptConfig()
    generation: GenerationConfig = GenerationConfig()
    image: CaptionImageConfig = CaptionImageConfig()
    clean: CleanConfig = CleanConfig()
    tokens: TokenConfig = TokenConfig()
    caption: CaptionBatchingConfig = CaptionBatchingConfig()
    tags: TaggerConfig = TaggerConfig()
    output: CaptionOutputConfig = CaptionOutputConfig()
