"""Building pyiqa metrics from local files only: nothing is ever downloaded, a missing file is one line.

* ``no_downloads()``: while a model is built, a weight file that is not in its local cache raises
  instead of being fetched (pyiqa's, torch.hub's and Hugging Face's download paths);
* ``transformers_llama_untouched()``: undoes pyiqa's module-wide patch of transformers' Llama classes;
* ``build_pyiqa(name, ...)``: ``pyiqa.create_metric`` under both guards; a missing file becomes
  ``MissingWeights`` naming the file, where it is looked for and where it is published;
* with ``pretrained=False`` the metric is built from its architecture config with random weights
  (``random_weights.random_backbones``): for tests and throughput measurements without weights.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

from supirkit.datapipe.devices import resolve_device
from supirkit.datapipe.errors import MissingWeights


def missing_from_traceback(exc: BaseException) -> Optional[str]:
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


def is_download_error(exc: BaseException) -> bool:
    e: Optional[BaseException] = exc
    while e is not None:
        if type(e).__name__ in _DOWNLOAD_ERRORS:
            return True
        e = e.__cause__ or e.__context__
    return False


class NotLocal(Exception):
    """Raised inside ``no_downloads`` in place of a download: the file and where it was to go."""

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
    """While models are built, a weight file that is not in the local cache raises ``NotLocal``
    (naming the file and the place it is looked for) instead of being downloaded. pyiqa fetches every
    weight through ``load_file_from_url`` -> ``download_url_to_file`` (its own import of torch.hub's),
    torchvision/timm backbones through ``torch.hub.download_url_to_file``; both names are swapped for
    the duration of the build only. Hugging Face files (timm backbones) are read from the cache only."""
    import torch.hub

    targets = [torch.hub]
    try:
        import pyiqa.utils.download_util as pyiqa_dl

        targets.append(pyiqa_dl)
    except ImportError:
        pass

    def refuse(url, dst, *args, **kwargs):
        raise NotLocal(str(url), str(dst))

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


def _arch_accepts(name: str, argument: str) -> bool:
    """Whether the constructor of pyiqa metric ``name`` takes ``argument`` (NIQE, PSNR and other metrics
    without weights do not take ``pretrained``). Imports the architecture: call inside the guards."""
    import inspect

    from pyiqa.archs import ARCH_REGISTRY, _lazy_import_arch
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    arch = DEFAULT_CONFIGS.get(name, {}).get("metric_opts", {}).get("type")
    if arch is None:
        return False
    if arch not in ARCH_REGISTRY:
        _lazy_import_arch(arch)
    params = inspect.signature(ARCH_REGISTRY.get(arch).__init__).parameters.values()
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _pyiqa_kwargs(name: str, pretrained: bool, options: Optional[dict]) -> dict:
    kwargs = dict(options or {})
    if not pretrained and _arch_accepts(name, "pretrained"):
        kwargs.setdefault("pretrained", False)
        if name.startswith("topiq"):
            kwargs.setdefault("backbone_pretrain", False)
    return kwargs


def build_pyiqa(name: str, device: str = "auto", pretrained: bool = True, options: Optional[dict] = None):
    """``pyiqa.create_metric(name)`` in eval mode, from local files only.

    ``options`` go to the metric's constructor (e.g. ``pretrained_model_path`` to point at a local weight
    file, ``test_sample`` for MANIQA's crop count). ``pretrained=False``: random weights, built from the
    architecture config (see ``random_weights``). A missing file raises ``MissingWeights``."""
    import pyiqa

    from supirkit.metrics.random_weights import random_backbones

    device = resolve_device(device)
    guard = contextlib.nullcontext() if name.startswith("qalign") else transformers_llama_untouched()
    randomize = contextlib.nullcontext() if pretrained else random_backbones()
    try:  # pyiqa prints "Downloading: ..." before every fetch, even the ones refused here: kept off stdout
        with no_downloads(), guard, randomize, contextlib.redirect_stdout(io.StringIO()):
            kwargs = _pyiqa_kwargs(name, pretrained, options)
            model = pyiqa.create_metric(name, device=device, as_loss=False, **kwargs)
    except NotLocal as exc:
        raise MissingWeights(
            f"pyiqa metric {name!r} needs the weight file {os.path.basename(exc.dst)!r}, which is not "
            f"on this machine: place it at {exc.dst} (it is published at {exc.url})") from None
    except Exception as exc:
        if is_download_error(exc):
            where = missing_from_traceback(exc) or "see pyiqa's model card for the file name"
            raise MissingWeights(f"pyiqa metric {name!r} needs weights that are not on this "
                                      f"machine: {where}") from None
        if isinstance(exc, FileNotFoundError):  # a local path given in the options that does not exist
            raise MissingWeights(f"pyiqa metric {name!r}: weight file not found: "
                                      f"{exc.filename or exc}") from None
        raise
    model.eval()
    return model


def resolve_open_clip(model: str, weights: Optional[str]) -> tuple[str, Optional[str]]:
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


def check_open_clip(model: str, weights: Optional[str], hint: str = "") -> None:
    """``MissingWeights`` when an open_clip model's weights are not on this machine, found without building
    the model: a local file must exist; a pretrained tag must be in open_clip's cache (never downloaded)."""
    from open_clip import pretrained

    name, weights = resolve_open_clip(model, weights)
    if weights is None or os.path.isfile(weights):
        return
    cfg = pretrained.get_pretrained_cfg(name, weights)
    if not cfg:
        raise MissingWeights(f"open_clip model {name!r} has no pretrained tag {weights!r} and no such file")
    try:
        with no_downloads(), contextlib.redirect_stderr(io.StringIO()):
            pretrained.download_pretrained(cfg)
    except NotLocal as exc:
        raise MissingWeights(f"open_clip model {name!r} ({weights}) needs {os.path.basename(exc.dst)!r}, which is not "
                             f"on this machine: place it at {exc.dst} (published at {exc.url})") from None
    except Exception as exc:
        if not is_download_error(exc):
            raise
        where = missing_from_traceback(exc) or hint or "give the weights as a local file"
        raise MissingWeights(f"open_clip model {name!r} ({weights}) is not on this machine: {where}") from None


def build_open_clip(model: str, weights: Optional[str], device: str = "auto", hint: str = "") -> tuple:
    """(model in eval mode, its open_clip name): ``open_clip.create_model`` from local files only
    (``resolve_open_clip`` names). A missing file raises ``MissingWeights``; ``hint`` says which
    setting gives a local file."""
    import open_clip

    name, weights = resolve_open_clip(model, weights)
    try:
        with no_downloads():
            built = open_clip.create_model(name, pretrained=weights, device=resolve_device(device))
    except NotLocal as exc:
        raise MissingWeights(f"open_clip model {name!r} needs the weight file {os.path.basename(exc.dst)!r}, "
                                  f"which is not on this machine: place it at {exc.dst} (published at {exc.url})"
                                  ) from None
    except Exception as exc:
        if not is_download_error(exc):
            raise
        where = missing_from_traceback(exc) or hint or "give the weights as a local file"
        raise MissingWeights(f"open_clip model {name!r} ({weights}) is not on this machine: {where}") from None
    return built.eval(), name


def options_key(options: Optional[dict[str, Any]]) -> str:
    return json.dumps(options or {}, sort_keys=True, default=str)
