"""model: SUPIR on diffusers SDXL (trunk, connectors, DR encoder, sampler, conversion) and the restore pipeline.

Public API (resolved lazily, so ``import supirkit.model`` stays free of torch and diffusers):

* configs: ``SupirModelConfig``, ``TrunkLayoutConfig``, ``load_model_config``, ``read_json_config``, ``RestoreConfig``,
  ``PromptRuleConfig``, ``SamplerConfig``, ``DEFAULT_POSITIVE``, ``DEFAULT_NEGATIVE``;
* model: ``SUPIRModel`` (frozen UNet + adaptor: ``from_unet``, ``from_adaptor``, ``save_adaptor``,
  ``trainable_parameters``, ``enable_gradient_checkpointing``), ``SUPIRAdaptor``, ``ControlTrunk``, ``ZeroSFT``,
  ``ZeroCrossAttn``, ``load_adaptor``, ``load_dr_encoder_if_present``, ``DR_ENCODER_SUBFOLDER``;
* DR encoder: ``DegradationRobustEncoder``, ``dr_encoder_loss``;
* sampling: ``SigmaSchedule``, ``RestoreEDMSampler``, ``SamplerSettings``, ``Conditioning``, ``supir_eps_fn``,
  ``sliding_windows``, ``gaussian_weights``, ``color_fix``;
* text: ``SDXLTextEncoders``, ``time_ids``;
* runtime options (attention kernel, torch.compile, channels-last, VAE slicing/tiling): ``RuntimeOptions``,
  ``apply_runtime_options``;
* conversion and counts: ``convert_official_checkpoint``, ``write_adaptor_folder``, ``describe``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "config": ("SupirModelConfig", "TrunkLayoutConfig", "load_model_config", "read_json_config", "RestoreConfig",
               "PromptRuleConfig", "SamplerConfig", "DEFAULT_POSITIVE", "DEFAULT_NEGATIVE"),
    "supir": ("SUPIRModel", "SUPIRAdaptor", "load_adaptor", "load_dr_encoder_if_present", "DR_ENCODER_SUBFOLDER"),
    "trunk": ("ControlTrunk",),
    "connectors": ("ZeroSFT", "ZeroCrossAttn"),
    "dr_encoder": ("DegradationRobustEncoder", "dr_encoder_loss"),
    "sampler": ("SigmaSchedule", "RestoreEDMSampler", "SamplerSettings", "Conditioning", "supir_eps_fn"),
    "tiling": ("sliding_windows", "gaussian_weights"),
    "colorfix": ("color_fix",),
    "text": ("SDXLTextEncoders", "time_ids"),
    "convert": ("convert_official_checkpoint", "write_adaptor_folder"),
    "counts": ("describe",),
    "runtime": ("RuntimeOptions", "apply_runtime_options"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "Conditioning", "ControlTrunk", "DEFAULT_NEGATIVE", "DEFAULT_POSITIVE", "DR_ENCODER_SUBFOLDER",
    "DegradationRobustEncoder", "SupirModelConfig", "PromptRuleConfig", "RestoreConfig", "RestoreEDMSampler",
    "RuntimeOptions", "SDXLTextEncoders", "SUPIRAdaptor", "SUPIRModel", "SamplerConfig", "SamplerSettings",
    "SigmaSchedule", "TrunkLayoutConfig", "ZeroCrossAttn", "ZeroSFT", "apply_runtime_options", "color_fix",
    "convert_official_checkpoint", "describe",
    "dr_encoder_loss", "gaussian_weights", "load_adaptor", "load_dr_encoder_if_present", "load_model_config",
    "read_json_config", "sliding_windows", "supir_eps_fn", "time_ids", "write_adaptor_folder",
]
assert sorted(__all__) == sorted(_WHERE)  # one list of names, kept in step


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
