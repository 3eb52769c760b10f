"""Learned scorers (``needs_gpu``): pyiqa metrics on native tiles; LAION-style aesthetics and CLIP
embeddings from open_clip. Weights come from local files only; a missing one is named in one error."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from supirkit.curation.signals.base import ImageView, Scorer
from supirkit.datapipe.devices import resolve_device
from supirkit.datapipe.errors import MissingWeights

# The guarded model loading (no downloads, the Llama guard, one-line missing weights) lives in
# supirkit.metrics: one implementation for curation, evaluation and training validation.
from supirkit.metrics.loading import build_open_clip, build_pyiqa

__all__ = ["IQAScorer", "ClipScorer", "build_model_scorers", "load_aesthetic_head"]


class IQAScorer(Scorer):
    """One pyiqa metric, averaged over ``tiles`` native-resolution crops of ``tile_size`` pixels."""

    needs_gpu = True

    def __init__(self, metric: str, pretrained: bool = True, tiles: int = 2, tile_size: int = 384,
                 batch_size: int = 8, device: str = "auto", options: Optional[dict] = None) -> None:
        self.metric, self.pretrained = metric, pretrained
        self.options = dict(options or {})  # further pyiqa.create_metric arguments (e.g. clipiqa's backbone file)
        self.tiles, self.tile_size, self.batch_size, self.device_pref = tiles, tile_size, batch_size, device
        self.name = f"iqa.{metric}"
        self.columns = (self.name,)
        self.model = None

    def setup(self, device: str = "") -> None:
        self.device = resolve_device(device or self.device_pref)
        self.model = build_pyiqa(self.metric, self.device, self.pretrained, self.options)

    def __getstate__(self):  # a copy sent to a CPU task prepares inputs: it never carries the model
        return {**self.__dict__, "model": None}

    def prepare(self, view: ImageView) -> list[np.ndarray]:
        """The native-resolution tiles the metric reads (uint8 copies: small, and free of the full image)."""
        h, w = view.height, view.width
        t = min(self.tile_size, h, w)
        boxes = view.tile_boxes[0][: self.tiles] if t == min(view.opt.tile_size, h, w) else []
        if not boxes:  # tiles of another size: a centred row of positions
            xs = np.linspace(0, w - t, self.tiles + 2)[1:-1].astype(int)
            boxes = [((h - t) // 2, int(x)) for x in xs]
        return [np.ascontiguousarray(view.native[y:y + t, x:x + t]) for y, x in boxes]

    def score_prepared(self, inputs: list[list[np.ndarray]]) -> list[dict]:
        import torch

        if self.model is None:
            self.setup()
        tiles, owner = [], []
        for i, image_tiles in enumerate(inputs):
            for tile in image_tiles:
                tiles.append(torch.from_numpy(tile).permute(2, 0, 1).float() / 255.0)
                owner.append(i)
        scores: list[list[float]] = [[] for _ in inputs]
        shapes: dict = {}
        for t, i in zip(tiles, owner):
            shapes.setdefault(tuple(t.shape), []).append((t, i))
        with torch.inference_mode():
            for group in shapes.values():
                for s in range(0, len(group), self.batch_size):
                    chunk = group[s:s + self.batch_size]
                    x = torch.stack([t for t, _ in chunk]).to(self.device)
                    out = self.model(x).reshape(-1).float().cpu().numpy()
                    for (_, i), val in zip(chunk, out):
                        scores[i].append(float(val))
        return [{self.name: round(float(np.mean(s)), 5) if s else None} for s in scores]


class ClipScorer(Scorer):
    """L2-normalised open_clip image embeddings (``clip_embedding``) and, with a head, the LAION-style
    aesthetic score (``aesthetic``) of the centre-cropped, resized image."""

    needs_gpu = True
    name = "clip"
    needs_native = False  # the centre crop is resized from the downscaled copy (or a reduced decode)

    @property
    def input_side(self) -> int:
        return int(getattr(self, "image_size", 0))  # known once setup() has built the model

    def __init__(self, clip_model: str, clip_weights: Optional[str], head_weights: Optional[str],
                 aesthetic: bool, embeddings: bool, batch_size: int = 32, device: str = "auto") -> None:
        self.clip_model, self.clip_weights, self.head_weights = clip_model, clip_weights, head_weights
        self.aesthetic, self.embeddings, self.batch_size, self.device_pref = aesthetic, embeddings, batch_size, device
        self.columns = (("aesthetic",) if aesthetic else ()) + (("clip_embedding",) if embeddings else ())
        self.model = None

    def setup(self, device: str = "") -> None:
        import open_clip

        self.device = resolve_device(device or self.device_pref)
        model, _ = build_open_clip(self.clip_model, self.clip_weights, self.device,
                                   hint="give signals.aesthetic.clip_weights as a local file")
        self.model = model.eval()
        cfg = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
        self.image_size = int(getattr(model.visual, "image_size", (224, 224))[0]
                              if isinstance(getattr(model.visual, "image_size", 224), (tuple, list))
                              else getattr(model.visual, "image_size", 224))
        self.mean = np.asarray(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), np.float32)
        self.std = np.asarray(cfg.get("std", open_clip.OPENAI_DATASET_STD), np.float32)
        self.head = None
        if self.aesthetic:
            if not self.head_weights:
                raise MissingWeights("signals.aesthetic.head_weights is not set: give the LAION aesthetic "
                                          "MLP file (e.g. sac+logos+ava1-l14-linearMSE.pth)")
            self.head = load_aesthetic_head(self.head_weights).to(self.device).eval()

    def __getstate__(self):  # a copy sent to a CPU task prepares inputs: it never carries the model
        return {**self.__dict__, "model": None, "head": None}

    def prepare(self, view: ImageView) -> np.ndarray:
        """The centre crop the model reads, resized to its input size (uint8 HxWx3; normalised in
        ``score_prepared``, beside the model)."""
        import cv2

        s = self.image_size
        src = view.small if min(view.small.shape[:2]) >= s else view.rgb
        h, w = src.shape[:2]
        k = s / min(h, w)
        img = cv2.resize(src, (max(s, round(w * k)), max(s, round(h * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
        y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
        return np.ascontiguousarray(img[y:y + s, x:x + s])

    def _normalise(self, crop: np.ndarray) -> np.ndarray:
        img = crop.astype(np.float32) / 255.0
        return ((img - self.mean) / self.std).transpose(2, 0, 1)

    def score_prepared(self, inputs: list[np.ndarray]) -> list[dict]:
        import torch

        if self.model is None:
            self.setup()
        out: list[dict] = []
        with torch.inference_mode():
            for s in range(0, len(inputs), self.batch_size):
                x = torch.from_numpy(np.stack([self._normalise(c) for c in inputs[s:s + self.batch_size]]))
                x = x.to(self.device)
                emb = torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
                aest = self.head(emb).reshape(-1).cpu().numpy() if self.head is not None else None
                e = emb.cpu().numpy().astype(np.float32)
                for j in range(len(e)):
                    row = {}
                    if aest is not None:
                        row["aesthetic"] = round(float(aest[j]), 4)
                    if self.embeddings:
                        row["clip_embedding"] = e[j].tolist()
                    out.append(row)
        return out


def aesthetic_head(dims: list[int]):
    """The LAION improved-aesthetic-predictor MLP: Linear layers at Sequential indices 0, 2, 4, 6, 7
    (dropouts between, no activations), so the original .pth state dict loads as it is."""
    import torch.nn as nn

    d = dims
    layers = nn.Sequential(nn.Linear(d[0], d[1]), nn.Dropout(0.2), nn.Linear(d[1], d[2]), nn.Dropout(0.2),
                           nn.Linear(d[2], d[3]), nn.Dropout(0.1), nn.Linear(d[3], d[4]), nn.Linear(d[4], d[5]))

    class AestheticHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            return self.layers(x)

    return AestheticHead()


def load_aesthetic_head(path: str):
    import torch

    p = Path(os.path.expandvars(os.path.expanduser(path)))
    if not p.is_file():
        raise MissingWeights(f"aesthetic head weights not found: place the file at {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    dims = [sd["layers.0.weight"].shape[1]] + [sd[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)]
    head = aesthetic_head(dims)
    head.load_state_dict(sd)
    return head


def build_model_scorers(cfg) -> list[Scorer]:
    s = cfg.signals
    scorers: list[Scorer] = [IQAScorer(m, s.iqa.pretrained, s.iqa.tiles, s.iqa.tile_size, s.iqa.batch_size, s.device)
                             for m in s.iqa.metrics]
    if s.aesthetic.enabled or cfg.dedup.semantic.enabled:
        a = s.aesthetic
        scorers.append(ClipScorer(a.clip_model, a.clip_weights, a.head_weights, a.enabled,
                                  cfg.dedup.semantic.enabled, a.batch_size, s.device))
    for sc in scorers:
        sc.setup()
    return scorers
