"""The training config (``configs/train/*.yaml``): model, data mixture, optimiser, schedule, checkpointing,
logging and validation. Imports no torch, so ``supirkit train --help`` and config checks stay fast.

Everything that changes what is trained lives here; how many machines run it lives in the accelerate
config (``configs/accelerate/*.yaml``), so the same training config runs on one GPU or on 64.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from supirkit.datapipe.config import Schema, load_config
from supirkit.datapipe.decode import DEFAULT_MAX_PIXELS
from supirkit.model.runtime import RuntimeOptions

DEFAULT_CONFIG = "train/supir.yaml"


class TrainModelConfig(Schema):
    """Which SDXL to build on, which SUPIR layout (the model developer's ``configs/model`` file), which LQ encoder."""

    pretrained: str = Field(
        ..., description="SDXL pipeline folder in diffusers layout (unet/, vae/, text_encoder*/, ...)."
    )
    config: str = Field("model/supir.yaml", description="SUPIR model config (trunk layout, connectors, control scale).")
    lq_encoder: Literal["dr", "vae"] = Field(
        "dr", description="Encoder of the LQ latent: the degradation-robust encoder or SDXL's own VAE encoder.")
    dr_encoder: Optional[str] = Field(
        None, description="Folder of a trained DR encoder (an adaptor folder with dr_encoder/, or the dr_encoder/ "
                          "folder itself). None: a fresh copy of the VAE encoder (= the original encoder).")
    init_adaptor: Optional[str] = Field(None, description="Adaptor folder to start from (fine-tuning); None: fresh.")
    vae_sample: bool = Field(True, description="HQ latent: sample the VAE posterior (sgm) instead of its mode.")


class MixtureMemberConfig(Schema):
    """One shard set of the training mixture (HQ corpus, faces, negatives, ...)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$")
    shards: Union[str, list[str]] = Field(
        ..., description="Folder, glob, brace pattern, .tar or fsspec URL (or a list)."
    )
    weight: float = Field(..., gt=0, description="Relative sampling weight; normalised over the mixture.")
    prompt: Literal["assemble", "caption"] = Field(
        "assemble", description="assemble: caption + positive quality prompt (the shared rule); "
                                "caption: the caption alone (negatives: their caption is the negative prompt).")


class TrainCropConfig(Schema):
    size: int = Field(512, ge=8, le=4096, description="Square crop side in pixels (multiple of 8: the VAE factor).")
    hflip_prob: float = Field(0.5, ge=0.0, le=1.0)
    resize_short_side: Optional[int] = Field(
        None, ge=8, description="Resize every image so its short side is this before cropping (None: keep).")
    small_images: Literal["upscale", "skip"] = Field(
        "upscale", description="Images whose short side is below the crop: upscale (bicubic) or draw another.")

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError("must be a multiple of 8 (the VAE downsamples by 8)")
        return v


class TrainDataConfig(Schema):
    mixture: list[MixtureMemberConfig] = Field(..., min_length=1)
    crop: TrainCropConfig = Field(default_factory=TrainCropConfig)
    degrade: str = Field(
        "supir", description="Degradation profile name (configs/degrade/<name>.yaml) or a config path."
    )
    degrade_overrides: list[str] = Field(
        default_factory=list,
        description="--set style overrides of the profile, e.g. hq_size=null, output.size=hq for small crops.",
    )
    degrade_seed: Literal["draw", "key"] = Field(
        "draw", description="draw: each draw's degradation is seeded by (seed, rank, sample index), so an image "
                            "drawn twice gets two degradations; key: by (seed, epoch, image key), one per image "
                            "and epoch (a repeated draw within an epoch repeats its degradation)")
    caption_drop_prob: float = Field(0.05, ge=0.0, le=1.0, description="Probability of an empty prompt (for CFG).")
    restore_config: str = Field(
        "restore/default.yaml", description="The restore config whose prompt rule (positive prompt, separator) and "
                                            "micro-conditioning training uses, so training sees what restoring feeds.")
    micro_conditioning: Literal["fixed", "metadata"] = Field(
        "fixed", description="fixed: the restore config's six ids (1024, 0,0, 1024); metadata: the sample's original "
                             "size and crop position, with the restore config's target size.")
    epoch_samples: Optional[int] = Field(
        None,
        ge=1,
        description="Samples per epoch over all ranks (degradations change per epoch); None: rows in the mixture.",
    )
    split_shards_by_rank: bool = Field(
        True, description="Each rank draws from its own shards (by rows when a set has fewer shards than ranks).")
    num_workers: int = Field(4, ge=0, le=64, description="Loader processes per rank.")
    prefetch_factor: int = Field(2, ge=1)
    max_redraws: int = Field(
        8, ge=0, description="Unreadable/too-small samples are replaced by a new draw, this often."
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Decompression-bomb guard.")

    @model_validator(mode="after")
    def _unique_names(self):
        names = [m.name for m in self.mixture]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture names must be unique, got {names}")
        return self


class EMAConfig(Schema):
    enabled: bool = False
    decay: float = Field(0.9999, gt=0.0, lt=1.0)
    update_every: int = Field(1, ge=1, description="Optimizer steps between EMA updates.")
    start_step: int = Field(0, ge=0, description="Copy the weights (no averaging) until this step.")
    warmup: Literal["litema", "none"] = Field(
        "litema", description="litema: decay min(decay, (1+n)/(10+n)) at update n, as sgm's LitEma; none: fixed")


class OptimConfig(Schema):
    lr: float = Field(1e-5, gt=0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-2, ge=0.0, description="torch AdamW default (sgm used it as is).")
    eps: float = Field(1e-8, gt=0)
    use_8bit_adam: bool = Field(False, description="bitsandbytes AdamW8bit (CUDA only).")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Gradient clipping; None: off.")
    ema: EMAConfig = Field(default_factory=EMAConfig)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas must be in [0, 1)")
        return v


class ScheduleConfig(Schema):
    max_steps: int = Field(..., ge=1, description="Optimizer steps of the whole run.")
    batch_size: int = Field(4, ge=1, description="Samples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = Field(1000, ge=0)
    seed: int = Field(0, ge=0, description="Data stream, crops, degradations, noise and init: all derive from it.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "bf16", description="Autocast for the trained path; frozen models stored in this dtype."
    )
    gradient_checkpointing: Optional[bool] = Field(None, description="None: the model config's value.")
    allow_tf32: bool = True
    timestep_range: tuple[int, int] = Field((0, 999), description="Uniform t in [lo, hi] (SDXL: 0..999).")
    offset_noise: float = Field(0.0, ge=0.0, le=1.0, description="sgm offset_noise_level (0 = off).")

    @model_validator(mode="after")
    def _range(self):
        lo, hi = self.timestep_range
        if not 0 <= lo <= hi <= 999:
            raise ValueError("timestep_range must satisfy 0 <= lo <= hi <= 999")
        return self


class CheckpointConfig(Schema):
    every_steps: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1, description="Checkpoints kept (rotation); exports are kept apart.")
    export_every_steps: Optional[int] = Field(
        None, ge=1, description="Also export a restore-ready adaptor this often (None: at the end only)."
    )
    export_ema: bool = Field(True, description="Export the EMA weights when EMA is on.")


class LoggingConfig(Schema):
    backend: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    project: str = Field("supirkit", description="TensorBoard run folder / wandb project.")
    every_steps: int = Field(10, ge=1)
    trace: bool = Field(
        False, description="Per-rank JSONL of sample keys and a parameter checksum each step (debugging determinism)."
    )


class ValidationConfig(Schema):
    every_steps: int = Field(0, ge=0, description="0: off. Runs on the main process.")
    num_images: int = Field(4, ge=1, le=64, description="Fixed pairs drawn (and degraded) once from the mixture.")
    lq_folder: Optional[str] = Field(
        None, description="Restore these LQ images instead (no full-reference metrics unless hq_folder)."
    )
    hq_folder: Optional[str] = Field(None, description="Ground truth with the same file names as lq_folder.")
    restore_overrides: list[str] = Field(
        default_factory=list, description="--set style overrides of data.restore_config for validation, "
                                          "e.g. sampler.num_steps=20, sampler.restore_cfg=4.0.")
    metrics: list[str] = Field(default_factory=lambda: ["psnr", "ssim", "lpips", "musiq", "clipiqa"])
    loss_batches: int = Field(
        1, ge=0, le=64, description="Fixed batches with fixed noise whose loss is logged (val/loss)."
    )
    at_start: bool = Field(True, description="Also validate before the first step (a baseline).")


class EncoderStageConfig(Schema):
    """``--stage encoder``: the degradation-robust encoder on the same data."""

    loss_target: Literal["clean_reconstruction", "pixels", "literal_stopgrad"] = "clean_reconstruction"


class TrainConfig(Schema):
    stage: Literal["adaptor", "encoder"] = "adaptor"
    output_dir: str = Field("runs/supir", description="Checkpoints, logs and exports (the CLI's --out overrides).")
    model: TrainModelConfig
    data: TrainDataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    encoder: EncoderStageConfig = Field(default_factory=EncoderStageConfig)
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions,
                                    description="Attention kernel, torch.compile, channels-last, VAE slicing "
                                                "(model/runtime.py).")


def load_train_config(path=None, overrides=()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides, default=DEFAULT_CONFIG)


__all__ = ["TrainConfig", "TrainDataConfig", "MixtureMemberConfig", "load_train_config", "DEFAULT_CONFIG"]
