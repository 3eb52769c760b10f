"""metrics: the one implementation of every image-quality metric supirkit reports.

Used by ``supirkit evaluate``, by training validation and by curation's pyiqa scorer.

* ``psnr(restored, reference, convention)``, ``ssim(...)``: uint8 RGB arrays, under a stated
  ``FidelityConvention`` (RGB / Y / luma channel, border crop, rounding; named ``PRESETS``);
* ``build_metrics(names, device=, pretrained=, conventions=, options=)`` -> ``MetricSuite``: PSNR/SSIM
  plus any pyiqa metric (LPIPS, DISTS, MUSIQ, CLIP-IQA, MANIQA, NIQE, ...) built from local files only;
* ``missing_weights(names)``: one line per metric whose weight files are not on this machine (never
  downloads), for a preflight before any work;
* ``build_pyiqa``, ``no_downloads``, ``transformers_llama_untouched``, ``MissingWeights``: the
  guarded pyiqa loading the above are built on.

Nothing heavy is imported until a metric is built or computed.
"""
from supirkit.metrics.conventions import DEFAULT_PRESET, PRESETS, FidelityConvention, preset
from supirkit.metrics.fidelity import FidelityError, psnr, ssim
from supirkit.metrics.loading import MissingWeights, build_pyiqa, no_downloads, transformers_llama_untouched
from supirkit.metrics.suite import KNOWN_METRICS, MetricInfo, MetricSuite, build_metrics, metric_info, missing_weights

__all__ = [
    "DEFAULT_PRESET", "PRESETS", "FidelityConvention", "preset", "FidelityError", "psnr", "ssim",
    "MissingWeights", "build_pyiqa", "no_downloads", "transformers_llama_untouched", "KNOWN_METRICS",
    "MetricInfo", "MetricSuite", "build_metrics", "metric_info", "missing_weights",
]
