"""Config schema of ``supirkit negatives`` (SUPIR's negative-quality samples, paper §3.2 and App. A.4).

Every field here changes the produced images except ``runner``, which is left out of the config hash:
resuming a folder with any other value of these fields is refused (``prepare_output``).
"""
from __future__ import annotations

from typing import List, Literal, Optional

from pydantic import Field, model_validator

from supirkit.datapipe.config import PREFIX_PATTERN, DecodeConfig, JobConfig, OutputConfig, Schema
from supirkit.datapipe.devices import Device, DType

#: The negative-quality prompt of SUPIR's App. A.4 (Fig. 19), used both to steer SDXL and as the caption.
PAPER_PROMPT = ("oil painting, cartoon, blurring, dirty, messy, low quality, frames, deformed, lowres, "
                "over-smooth")

#: Negative-quality words: the paper's prompt plus the words of SUPIR's default sampling negative prompt.
NEGATIVE_WORDS = ("oil painting", "cartoon", "blurring", "dirty", "messy", "low quality", "frames", "deformed",
                  "lowres", "over-smooth", "painting", "illustration", "drawing", "art", "sketch", "CG Style",
                  "3D render", "unreal engine", "worst quality", "watermark", "signature", "jpeg artifacts")

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"


class NegativesModelConfig(Schema):
    id: str = Field(SDXL_BASE, min_length=1, description="Hub id or local folder of an SDXL diffusers pipeline.")
    variant: Optional[str] = Field(
        None, description="Weight-file variant to load (e.g. fp16); null: the default files."
    )
    dtype: DType = Field("auto", description="auto: float16 on CUDA, float32 on CPU.")
    device: Device = "auto"
    cpu_threads: Optional[int] = Field(None, ge=1, le=1024, description="torch threads on CPU (null: torch's "
                                       "default). On a shared 2-core machine 1 is much faster than 2.")


class GenerateConfig(Schema):
    mode: Literal["img2img", "txt2img"] = Field("img2img", description="img2img (SDEdit from corpus images, the "
                                                "paper's method) or txt2img (noise to image).")
    count: int = Field(100_000, ge=1, le=1_000_000_000, description="Samples to produce in total.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Job seed: every sample's seed and key derive from it.")
    strength: float = Field(0.5, gt=0.0, le=1.0, description="img2img strength (share of the schedule re-noised).")
    steps: int = Field(50, ge=1, le=1000, description="Scheduler steps; img2img runs about steps*strength of them.")
    guidance_scale: float = Field(5.0, ge=0.0, le=50.0, description="Classifier-free guidance scale.")
    width: int = Field(1024, ge=8, le=8192, multiple_of=8)
    height: int = Field(1024, ge=8, le=8192, multiple_of=8)
    batch_size: int = Field(8, ge=1, le=1024, description="Images per pipeline call.")


class NegativesPromptConfig(Schema):
    mode: Literal["list", "words"] = Field("list", description="list: each sample takes one entry of `list`; "
                                           "words: each sample's prompt is built from `words`.")
    list: List[str] = Field(default_factory=lambda: [PAPER_PROMPT], min_length=1)
    words: List[str] = Field(default_factory=lambda: list(NEGATIVE_WORDS), min_length=1)
    words_min: int = Field(4, ge=1, description="words mode: fewest words in a prompt")
    words_max: int = Field(10, ge=1, description="words mode: most words in a prompt")
    negative_prompt: Optional[str] = Field(None, description="Classifier-free-guidance negative prompt; null: "
                                           "SDXL's zero unconditional embedding.")

    @model_validator(mode="after")
    def _check(self):
        if any(not p.strip() for p in self.list):
            raise ValueError("list: prompts must not be empty")
        if any(not w.strip() or "," in w for w in self.words):
            raise ValueError("words: each word must be non-empty and contain no comma")
        if self.words_min > self.words_max:
            raise ValueError(f"words_min ({self.words_min}) is larger than words_max ({self.words_max})")
        if self.mode == "words" and self.words_max > len(self.words):
            raise ValueError(f"words_max ({self.words_max}) is larger than the number of words ({len(self.words)})")
        return self


class NegativesSourceConfig(Schema):
    input_shards_per_partition: int = Field(1, ge=1, le=1024, description="Input shards each output shard draws "
                                            "its source images from (raise it when input shards are small).")
    crop: Literal["center", "random"] = Field("center", description="Which region of the source (cut to the "
                                              "output aspect ratio) is used; random is seeded per sample.")
    decode: DecodeConfig = DecodeConfig()


class NegativesOutputConfig(OutputConfig):
    prefix: str = Field("negatives", pattern=PREFIX_PATTERN)
    samples_per_shard: int = Field(1000, ge=1, le=1_000_000)
    codec: Literal["png", "jpg"] = Field("png", description="png (lossless) or jpg (4:4:4, jpeg_quality).")
    jpeg_quality: int = Field(95, ge=50, le=100)
    png_compress_level: int = Field(6, ge=0, le=9, description="zlib level: size/speed only, pixels are equal.")


class NegativesConfig(JobConfig):
    """The ``supirkit negatives`` job. Its decode limits sit in ``sources.decode``: only img2img reads images."""

    model: NegativesModelConfig = NegativesModelConfig()
    generate: GenerateConfig = GenerateConfig()
    prompts: NegativesPromptConfig = NegativesPromptConfig()
    sources: NegativesSourceConfig = NegativesSourceConfig()
    output: NegativesOutputConfig = NegativesOutputConfig()


__all__ = [
    "NegativesConfig",
    "NegativesModelConfig",
    "GenerateConfig",
    "NegativesPromptConfig",
    "NegativesSourceConfig",
    "NegativesOutputConfig",
    "PAPER_PROMPT",
    "NEGATIVE_WORDS",
    "SDXL_BASE",
]
