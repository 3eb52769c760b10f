"""Tag prompts (SeeSR's kind of prompt): the things an image shows, as a short list of words.

SeeSR found a list of tags a better text condition for restoration than a sentence (no prepositions to
mislead the model, and robust to degradation). Its tagger (RAM/DAPE) is not on PyPI; the two backends
here tag with what the project already loads, from local files only:

* ``ClipTagger``: zero-shot open_clip over a vocabulary file (one tag per line): each tag is embedded in
  ``template``, the image's similarity to every tag is turned into a softmax over the vocabulary, and the
  ``top_k`` most likely tags above ``threshold`` are kept;
* ``ClassifierTagger``: a transformers image-classification checkpoint; its labels are the tags (sigmoid
  scores for multi-label checkpoints, softmax otherwise), optionally restricted to a vocabulary.

``load_tagger(cfg)`` builds the one ``TaggerConfig`` names (``TAGGERS`` registry); ``tagger(images)`` maps
PIL images to lists of tags, most likely first. ``format_tags`` is the text written next to a caption.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from supirkit.captioning.backends import BackendError
from supirkit.captioning.config import TaggerConfig


class TaggerError(BackendError):
    """The tagger cannot be used as configured (no vocabulary, unreadable file)."""


def check_tagger(cfg: TaggerConfig) -> None:
    """Before any work: the vocabulary a configured tagger needs exists and holds tags."""
    if not cfg.model:
        return
    if cfg.backend == "clip" and not cfg.vocabulary:
        raise TaggerError("tags.backend clip needs tags.vocabulary (a text file, one tag per line)")
    read_vocabulary(cfg.vocabulary)


def read_vocabulary(path: Optional[str]) -> list[str]:
    """Tags from a text file, one per line; blank lines and ``#`` comments skipped, duplicates dropped."""
    if not path:
        return []
    p = Path(path).expanduser()
    if not p.is_file():
        raise TaggerError(f"tag vocabulary {p}: no such file")
    seen: dict[str, None] = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        tag = line.split("#", 1)[0].strip()
        if tag:
            seen.setdefault(tag, None)
    if not seen:
        raise TaggerError(f"tag vocabulary {p}: no tags in it")
    return list(seen)


def _select(probs: np.ndarray, names: Sequence[str], top_k: int, threshold: float) -> list[list[str]]:
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:top_k]
        out.append([names[i] for i in order if row[i] >= threshold])
    return out


class ClipTagger:
    """Zero-shot tags from an open_clip model over a vocabulary."""

    def __init__(self, cfg: TaggerConfig) -> None:
        import open_clip
        import torch

        from supirkit.metrics.loading import build_open_clip, resolve_device

        self.cfg = cfg
        self.vocabulary = read_vocabulary(cfg.vocabulary)
        if not self.vocabulary:
            raise TaggerError("tags.backend clip needs tags.vocabulary (a text file, one tag per line)")
        self.device = resolve_device(cfg.device)
        self.model, name = build_open_clip(cfg.model, cfg.weights, self.device,
                                           hint="give tags.weights as a local file")
        tokenizer = open_clip.get_tokenizer(name)
        visual = self.model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        pcfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = np.asarray(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN), np.float32)
        self.std = np.asarray(pcfg.get("std", open_clip.OPENAI_DATASET_STD), np.float32)
        with torch.inference_mode():
            text = tokenizer([cfg.template.format(t) for t in self.vocabulary]).to(self.device)
            self.text = torch.nn.functional.normalize(self.model.encode_text(text).float(), dim=-1)
            self.scale = float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0

    def _prep(self, image) -> np.ndarray:
        from PIL import Image

        s = self.image_size
        img = image.convert("RGB")
        k = s / min(img.size)
        img = img.resize((max(s, round(img.size[0] * k)), max(s, round(img.size[1] * k))), Image.Resampling.BICUBIC)
        left, top = (img.size[0] - s) // 2, (img.size[1] - s) // 2
        arr = np.asarray(img.crop((left, top, left + s, top + s)), np.float32) / 255.0
        return ((arr - self.mean) / self.std).transpose(2, 0, 1)

    def probabilities(self, images: Sequence) -> np.ndarray:
        """Softmax over the vocabulary of each image's scaled cosine similarities, (n_images, n_tags)."""
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.cfg.batch_size):
                x = torch.from_numpy(np.stack([self._prep(i) for i in images[s:s + self.cfg.batch_size]]))
                emb = torch.nn.functional.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1)
                out.append((self.scale * emb @ self.text.T).softmax(dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.vocabulary)), np.float32)

    def __call__(self, images: Sequence) -> list[list[str]]:
        return _select(self.probabilities(images), self.vocabulary, self.cfg.top_k, self.cfg.threshold)

    def describe(self) -> dict:
        return {"backend": "clip", "model": self.cfg.model, "vocabulary": len(self.vocabulary),
                "template": self.cfg.template, "top_k": self.cfg.top_k, "threshold": self.cfg.threshold}


class ClassifierTagger:
    """Tags from a transformers image-classification checkpoint (its ``id2label`` names)."""

    def __init__(self, cfg: TaggerConfig) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from supirkit.metrics.loading import resolve_device

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.processor = AutoImageProcessor.from_pretrained(cfg.model)
        self.model = AutoModelForImageClassification.from_pretrained(cfg.model).to(self.device).eval()
        labels = self.model.config.id2label
        self.names = [labels[i] for i in range(len(labels))]
        wanted = read_vocabulary(cfg.vocabulary)
        self.keep = [i for i, n in enumerate(self.names) if not wanted or n in wanted]
        if not self.keep:
            raise TaggerError(f"none of the vocabulary's tags is a label of {cfg.model}")
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self._torch = torch

    def probabilities(self, images: Sequence) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.cfg.batch_size):
                batch = [i.convert("RGB") for i in images[s:s + self.cfg.batch_size]]
                inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
                logits = self.model(**inputs).logits.float()
                p = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
                out.append(p[:, self.keep].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.keep)), np.float32)

    def __call__(self, images: Sequence) -> list[list[str]]:
        return _select(self.probabilities(images), [self.names[i] for i in self.keep], self.cfg.top_k,
                       self.cfg.threshold)

    def describe(self) -> dict:
        return {"backend": "classifier", "model": self.cfg.model, "labels": len(self.keep),
                "multi_label": self.multi_label, "top_k": self.cfg.top_k, "threshold": self.cfg.threshold}


TAGGERS = {"clip": ClipTagger, "classifier": ClassifierTagger}


def load_tagger(cfg: TaggerConfig):
    """The tagger ``cfg`` names, or None when ``cfg.model`` is null."""
    if not cfg.model:
        return None
    return TAGGERS[cfg.backend](cfg)
