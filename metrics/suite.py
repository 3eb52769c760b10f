"""The metric registry and ``MetricSuite``: every image-quality number supirkit reports comes from here.

``psnr`` and ``ssim`` are computed by ``metrics.fidelity`` under a stated ``FidelityConvention``; every
other name is a pyiqa metric built from local files (``metrics.loading.build_pyiqa``). The same suite
serves ``supirkit evaluate``, training validation and curation's pyiqa scorer, so a metric has one
implementation and one set of conventions everywhere.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from supirkit.metrics.conventions import DEFAULT_PRESET, FidelityConvention, preset

log = logging.getLogger("supirkit")

Mode = Literal["FR", "NR"]


@dataclass(frozen=True)
class MetricInfo:
    name: str  # the name configs use (pyiqa's name for pyiqa metrics)
    label: str  # the column header papers use
    mode: Mode  # FR: compares with a reference; NR: the restored image alone
    lower_better: bool
    backend: Literal["fidelity", "pyiqa"]

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_better else "↑"


#: the metrics the seed papers report (SUPIR, SeeSR, DiffBIR, ResShift), with their table labels
KNOWN_METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("psnr", "PSNR", "FR", False, "fidelity"),
    MetricInfo("ssim", "SSIM", "FR", False, "fidelity"),
    MetricInfo("lpips", "LPIPS", "FR", True, "pyiqa"),
    MetricInfo("lpips-vgg", "LPIPS-VGG", "FR", True, "pyiqa"),
    MetricInfo("dists", "DISTS", "FR", True, "pyiqa"),
    MetricInfo("musiq", "MUSIQ", "NR", False, "pyiqa"),
    MetricInfo("maniqa", "MANIQA", "NR", False, "pyiqa"),
    MetricInfo("clipiqa", "CLIPIQA", "NR", False, "pyiqa"),
    MetricInfo("niqe", "NIQE", "NR", True, "pyiqa"),
    MetricInfo("topiq_nr", "TOPIQ", "NR", False, "pyiqa"),
)}


def metric_info(name: str) -> MetricInfo:
    """The registry entry of ``name``; any other pyiqa metric is described from pyiqa's own table."""
    if name in KNOWN_METRICS:
        return KNOWN_METRICS[name]
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    cfg = DEFAULT_CONFIGS.get(name)
    if cfg is None:
        raise ValueError(f"unknown metric {name!r}: neither one of {', '.join(KNOWN_METRICS)} nor a pyiqa "
                         "metric (pyiqa.list_models() lists those)")
    return MetricInfo(name, name.upper(), cfg.get("metric_mode", "NR"), bool(cfg.get("lower_better", False)),
                      "pyiqa")


class FidelityMetric:
    """PSNR or SSIM under one convention."""

    def __init__(self, info: MetricInfo, convention: FidelityConvention) -> None:
        from supirkit.metrics.fidelity import FIDELITY_FUNCTIONS

        self.info, self.convention = info, convention
        self._fn = FIDELITY_FUNCTIONS[info.name]

    def describe(self) -> str:
        return self.convention.describe(self.info.name)

    def __call__(self, restored: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[float]:
        return [self._fn(r, ref, self.convention) for r, ref in zip(restored, references)]


class PyiqaMetric:
    """A pyiqa metric on uint8 RGB arrays: same-size images go through the network together."""

    def __init__(self, info: MetricInfo, model, batch_size: int = 8) -> None:
        self.info, self.model, self.batch_size = info, model, batch_size

    def describe(self) -> str:
        return f"pyiqa {self.info.name}"

    def _tensor(self, images: Sequence[np.ndarray]):
        import torch

        x = torch.from_numpy(np.stack([np.ascontiguousarray(i) for i in images]))
        return x.permute(0, 3, 1, 2).float().div_(255.0).to(self.model.device)

    def __call__(self, restored: Sequence[np.ndarray],
                 references: Optional[Sequence[np.ndarray]] = None) -> list[float]:
        import torch

        out: list[float] = [float("nan")] * len(restored)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(restored):
            groups.setdefault(img.shape, []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s:s + self.batch_size]
                    x = self._tensor([restored[i] for i in chunk])
                    if self.info.mode == "FR":
                        value = self.model(x, self._tensor([references[i] for i in chunk]))
                    else:
                        value = self.model(x)
                    for i, v in zip(chunk, value.reshape(-1).float().cpu().tolist()):
                        out[i] = float(v)
        return out


class MetricSuite:
    """Metrics built once; ``score(name, restored, references)`` per metric, ``score_pair`` for one image."""

    def __init__(self, metrics: dict, missing: Optional[dict[str, str]] = None) -> None:
        self.metrics = metrics
        self.missing = dict(missing or {})

    @property
    def names(self) -> list[str]:
        return list(self.metrics)

    def info(self, name: str) -> MetricInfo:
        return self.metrics[name].info

    def describe(self, name: str) -> str:
        return self.metrics[name].describe()

    def score(self, name: str, restored: Sequence[np.ndarray],
              references: Optional[Sequence[np.ndarray]] = None) -> tuple[list[float], list[str]]:
        """Values (NaN where an image failed) and the error text of each image ('' when fine). A failing
        batch is retried image by image, so one bad image never costs the others their score."""
        metric = self.metrics[name]
        if metric.info.mode == "FR" and references is None:
            raise ValueError(f"{name} compares with a reference image; none given")
        try:
            return list(metric(restored, references)), [""] * len(restored)
        except Exception:  # noqa: BLE001 - retried one by one below, each error kept with its image
            pass
        values, errors = [], []
        for i, img in enumerate(restored):
            try:
                values.append(metric([img], None if references is None else [references[i]])[0])
                errors.append("")
            except Exception as exc:  # noqa: BLE001 - the image's own error, reported with it
                values.append(float("nan"))
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
        return values, errors

    def score_pair(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> dict[str, float]:
        """Every metric on one image; full-reference ones only when ``reference`` is given."""
        out = {}
        for name, metric in self.metrics.items():
            if metric.info.mode == "FR" and reference is None:
                continue
            values, errors = self.score(name, [restored], None if reference is None else [reference])
            if not errors[0]:
                out[name] = values[0]
        return out


def build_metrics(names: Sequence[str], *, device: str = "auto", pretrained: bool = True,
                  conventions: Optional[dict[str, FidelityConvention]] = None,
                  options: Optional[dict[str, dict]] = None, batch_size: int = 8,
                  on_missing: Literal["raise", "skip"] = "raise") -> MetricSuite:
    """Build ``names`` in order. PSNR/SSIM use ``conventions[name]`` (default: the ``pyiqa_ycbcr``
    preset); pyiqa metrics get ``options[name]`` as constructor arguments. Weights that are not on this
    machine: ``on_missing="raise"`` raises one ``MissingWeights`` listing every such metric (one line
    each), ``"skip"`` leaves those metrics out and lists them in ``suite.missing``."""
    from supirkit.metrics.loading import MissingWeights, build_pyiqa

    conventions = {**preset(DEFAULT_PRESET), **(conventions or {})}
    metrics: dict = {}
    missing: dict[str, str] = {}
    for name in names:
        info = metric_info(name)
        if info.backend == "fidelity":
            metrics[name] = FidelityMetric(info, conventions[name])
            continue
        try:
            model = build_pyiqa(name, device, pretrained, (options or {}).get(name))
        except MissingWeights as exc:
            missing[name] = str(exc)
            continue
        metrics[name] = PyiqaMetric(info, model, batch_size)
    if missing and on_missing == "raise":
        raise MissingWeights(missing_report(missing))
    return MetricSuite(metrics, missing)


def missing_report(missing: dict[str, str]) -> str:
    lines = [f"weights missing for {len(missing)} metric(s); nothing was downloaded:"]
    lines += [f"  {name}: {why}" for name, why in missing.items()]
    return "\n".join(lines)


def missing_weights(names: Sequence[str], *, pretrained: bool = True, options: Optional[dict[str, dict]] = None,
                    device: str = "cpu") -> list[str]:
    """One line per metric whose weights are not on this machine (which file, where it goes, where it is
    published); empty when every metric can be built. Never downloads; works with ``HF_HUB_OFFLINE=1``.

    Each pyiqa metric is built once on ``device`` under ``no_downloads`` (the exact files the installed
    pyiqa asks for, in the order it asks), then dropped: a few seconds for the large ones on a CPU."""
    suite = build_metrics(names, device=device, pretrained=pretrained, options=options, on_missing="skip")
    return [f"{name}: {why}" for name, why in suite.missing.items()]
