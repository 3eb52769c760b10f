"""Learned scorers (``needs_gpu``): pyiqa metrics on native tiles; LAION-style aesthetics and CLIP
embeddings from open_clip. Weights come from local files only; a missing one is named in one error."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from supirkit.curation.signals.base import ImageView, Scorer
from supirkit.datapipe.devices import resolve_device
from supirkit.datapipe.errors import MissingWeights


def _missing_from_traceback(exc: BaseException) -> Optional[str]:
    """Which file a failed download wanted and where it would have gone, read from the failing frames
    (pyiqa's load_file_from_url, its CLIP loader, huggingface_hub): no monkeypatching needed."""
    tb = exc.__traceback__
    found: dict = {}
    while tb is not None:
        loc = tb.tb_frame.f_locals
        for k in ("url", "cached_file", "download_target", "repo_id", "filename", "model_dir", "root"):
            if k in loc and isinstance(loc[k], str):
                found.setdefault(k, loc[k])
        tb = tb.tb_next
    if "cached_file" in found or "download_target" in found:
        dst = found.get("cached_file") or found.get("download_target")
        return f"place {os.path.basename(dst)} at {dst}" + (f" (source: {found['url']})" if "url" in found else "")
    if "repo_id" in found:
        try:
            from huggingface_hub.constants import HF_HUB_CACHE as cache
        except ImportError:
            cache = os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
        return (f"the Hugging Face file {found.get('filename', '?')} of repo {found['repo_id']} is not in the "
                f"local cache {cache}; copy that repo's cache there (e.g. from a machine with internet: "
                f"hf download {found['repo_id']})")
    return None


_DOWNLOAD_ERRORS = ("URLError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
                    "HTTPError", "gaierror", "MaxRetryError")


def _is_download_error(exc: BaseException) -> bool:
    e: Optional[BaseException] = exc
    while e is not None:
        if type(e).__name__ in _DOWNLOAD_ERRORS:
            return True
        e = e.__cause__ or e.__context__
    return False


class _NotLocal(Exception):
    def __init__(self, url: str, dst: str) -> None:
        super().__init__(url)
        self.url, self.dst = url, dst


@contextlib.contextmanager
def transformers_llama_untouched():
    """Undo pyiqa's side effect on transformers when the block ends.

    Building a pyiqa metric can import every pyiqa architecture (its fallback when a class name does
    not match a module), Q-Align's among them, which replaces transformers' Llama attention and decoder
    classes (and two ``forward`` methods) module-wide. Every Llama-based model built later in the same
    process (LLaVA's language model among them) would then fail or compute something else, so the
    originals are put back. Q-Align metrics themselves need the patch and are built without this guard."""
    try:
        import transformers.models.llama.configuration_llama as llama_config
        import transformers.models.llama.modeling_llama as llama
    except ImportError:  # no transformers: nothing to protect
        yield
        return
    saved = {name: getattr(llama, name) for name in dir(llama) if name.startswith("Llama")}
    forwards = {cls: cls.__dict__.get("forward") for cls in (llama.LlamaModel, llama.LlamaForCausalLM)}
    config = llama_config.LlamaConfig
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(llama, name, value)
        for cls, forward in forwards.items():
            if forward is not None:
                cls.forward = forward
        llama_config.LlamaConfig = config


@contextlib.contextmanager
def no_downloads():
    """While models are built, a weight file that is not in the local cache raises ``_NotLocal``
    (naming the file and the place it is looked for) instead of being downloaded. pyiqa fetches every
    weight through ``load_file_from_url`` -> ``download_url_to_file`` (its own import of torch.hub's),
    torchvision/timm backbones through ``torch.hub.download_url_to_file``; both names are swapped for
    the duration of the build only."""
    import torch.hub

    targets = [torch.hub]
    try:
        import pyiqa.utils.download_util as pyiqa_dl

        targets.append(pyiqa_dl)
    except ImportError:
        pass

    def refuse(url, dst, *args, **kwargs):
        raise _NotLocal(str(url), str(dst))

    saved = [(m, m.download_url_to_file) for m in targets]
    for m in targets:
        m.download_url_to_file = refuse
    hf = None
    try:  # Hugging Face hub files (timm backbones): cache only, read at call time
        import huggingface_hub.constants as hf

        hf_offline = hf.HF_HUB_OFFLINE
        hf.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        yield
    finally:
        for m, f in saved:
            m.download_url_to_file = f
        if hf is not None:
            hf.HF_HUB_OFFLINE = hf_offline


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
        import pyiqa

        self.device = resolve_device(device or self.device_pref)
        kwargs = {}
        if not self.pretrained:
            kwargs["pretrained"] = False
            if self.metric.startswith("topiq"):
                kwargs["backbone_pretrain"] = False
        kwargs.update(self.options)
        try:
            guard = contextlib.nullcontext() if self.metric.startswith("qalign") else transformers_llama_untouched()
            with no_downloads(), guard:
                self.model = pyiqa.create_metric(self.metric, device=self.device, as_loss=False, **kwargs)
        except _NotLocal as exc:
            raise MissingWeights(
                f"pyiqa metric {self.metric!r} needs the weight file {os.path.basename(exc.dst)!r}, which is not "
                f"on this machine: place it at {exc.dst} (it is published at {exc.url})") from None
        except Exception as exc:
            if not _is_download_error(exc):
                raise
            where = _missing_from_traceback(exc) or "see pyiqa's model card for the file name"
            raise MissingWeights(f"pyiqa metric {self.metric!r} needs weights that are not on this "
                                      f"machine: {where}") from None
        self.model.eval()

    def _tiles(self, view: ImageView) -> list[np.ndarray]:
        h, w = view.height, view.width
        t = min(self.tile_size, h, w)
        boxes = view.tile_boxes[0][: self.tiles] if t == min(view.opt.tile_size, h, w) else []
        if not boxes:  # tiles of another size: a centred row of positions
            xs = np.linspace(0, w - t, self.tiles + 2)[1:-1].astype(int)
            boxes = [((h - t) // 2, int(x)) for x in xs]
        return [view.native[y:y + t, x:x + t] for y, x in boxes]

    def score_batch(self, views: list[ImageView]) -> list[dict]:
        import torch

        if self.model is None:
            self.setup()
        tiles, owner = [], []
        for i, v in enumerate(views):
            for tile in self._tiles(v):
                tiles.append(torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1).float() / 255.0)
                owner.append(i)
        scores: list[list[float]] = [[] for _ in views]
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


def _resolve_clip(model: str, weights: Optional[str]) -> tuple[str, Optional[str]]:
    """(open_clip model name, pretrained path or tag); a config .json (or a folder holding one) is
    registered with open_clip first, so custom/tiny models load through the ordinary create_model."""
    import open_clip

    p = Path(os.path.expandvars(os.path.expanduser(model)))
    if p.is_dir():
        configs = sorted(p.glob("*.json"))
        if len(configs) != 1:
            raise MissingWeights(f"{p}: expected exactly one open_clip model config (.json), found {len(configs)}")
        if weights is None:
            found = sorted(p.glob("*.safetensors"))
            weights = str(found[0]) if found else None
        p = configs[0]
    if p.suffix == ".json" and p.is_file():
        open_clip.add_model_config(p)
        model = p.stem
    if weights is not None:
        w = Path(os.path.expandvars(os.path.expanduser(weights)))
        if w.suffix in (".safetensors", ".bin", ".pt", ".pth") or os.sep in weights:
            if not w.is_file():
                raise MissingWeights(f"open_clip weights for {model!r} not found: place the file at {w}")
            weights = str(w)
    return model, weights


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
        name, weights = _resolve_clip(self.clip_model, self.clip_weights)
        try:
            with no_downloads():
                model = open_clip.create_model(name, pretrained=weights, device=self.device)
        except _NotLocal as exc:
            raise MissingWeights(f"open_clip model {name!r} needs the weight file {os.path.basename(exc.dst)!r}, "
                                      f"which is not on this machine: place it at {exc.dst} (published at {exc.url})"
                                      ) from None
        except Exception as exc:
            if not _is_download_error(exc):
                raise
            where = _missing_from_traceback(exc) or "give signals.aesthetic.clip_weights as a local file"
            raise MissingWeights(f"open_clip model {name!r} ({weights}) is not on this machine: {where}") from None
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

    def _prep(self, view: ImageView) -> np.ndarray:
        import cv2

        s = self.image_size
        src = view.small if min(view.small.shape[:2]) >= s else view.rgb
        h, w = src.shape[:2]
        k = s / min(h, w)
        img = cv2.resize(src, (max(s, round(w * k)), max(s, round(h * k))),
                         interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
        y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
        img = img[y:y + s, x:x + s].astype(np.float32) / 255.0
        return ((img - self.mean) / self.std).transpose(2, 0, 1)

    def score_batch(self, views: list[ImageView]) -> list[dict]:
        import torch

        if self.model is None:
            self.setup()
        out: list[dict] = []
        with torch.inference_mode():
            for s in range(0, len(views), self.batch_size):
                x = torch.from_numpy(np.stack([self._prep(v) for v in views[s:s + self.batch_size]])).to(self.device)
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
