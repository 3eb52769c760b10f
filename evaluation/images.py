"""Images addressed by key, from a folder of files or from shards: what ``evaluate`` compares.

A folder of image files gives each file under its stem (minus an optional suffix such as ``_out``); a
shard, a shard folder or a folder written by supirkit (``supirkit testset``: it holds ``__supirkit__/``) gives
each sample's main image under the sample key, so a test set's HQ crops are the references and its exported
``hq/``/``lq/`` copies are not read twice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from supirkit.datapipe.shard_format import IMAGE_SUFFIXES, ShardSetLayout


@dataclass(frozen=True)
class Located:
    key: str
    source: str  # display form: a path, or tar#key
    uri: str  # a file path or a tar URL
    in_tar: bool


@dataclass
class ImageIndex:
    by_key: dict[str, Located]
    duplicates: list[str]  # sources whose key was already taken (kept out, reported)
    unreadable: list[str]  # inputs that could not be listed (invalid entries, broken tars)


def _is_shard_spec(spec: str) -> bool:
    p = Path(spec)
    if spec.endswith(".tar") or ("{" in spec and ".tar" in spec):
        return True
    return p.is_dir() and (ShardSetLayout(p).is_supirkit_output() or (any(p.glob("*.tar")) and not _has_images(p)))


def _has_images(folder: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir() if f.is_file())


def index_images(spec: str, strip_suffix: str = "") -> ImageIndex:
    """Every image of ``spec`` by key (listing only: nothing is decoded). Raises FileNotFoundError when
    ``spec`` names nothing."""
    from supirkit.datapipe.keys import display_source
    from supirkit.datapipe.sources import INVALID, TAR, list_inputs
    from supirkit.datapipe.tario import list_shards, read_shard, sample_image

    by_key: dict[str, Located] = {}
    duplicates, unreadable = [], []

    def add(loc: Located) -> None:
        if loc.key in by_key:
            duplicates.append(loc.source)
        else:
            by_key[loc.key] = loc

    def add_tar(url: str) -> None:
        try:
            for sample in read_shard(url):
                if sample_image(sample)[1] is not None:
                    key = sample["__key__"]
                    add(Located(key, f"{display_source(url)}#{key}", url, True))
        except Exception as exc:  # noqa: BLE001 - a broken tar is reported, the others still count
            unreadable.append(f"{display_source(url)}: {type(exc).__name__}: {exc}")

    if _is_shard_spec(spec):
        for url in list_shards(spec):
            add_tar(url)
    else:
        if not os.path.exists(spec):
            raise FileNotFoundError(f"{spec}: no such file or folder")
        for ref in list_inputs([spec]):
            if ref.kind == INVALID:
                unreadable.append(f"{display_source(ref.uri)}: {ref.reason}")
            elif ref.kind == TAR:
                add_tar(ref.uri)
            else:
                stem = Path(ref.uri).stem
                if strip_suffix and stem.endswith(strip_suffix):
                    stem = stem[: -len(strip_suffix)]
                add(Located(stem, display_source(ref.uri), ref.uri, False))
    if not by_key and not unreadable:
        raise FileNotFoundError(f"{spec}: no images found")
    return ImageIndex(by_key, duplicates, unreadable)


class ImageReader:
    """Decodes located images; a tar is read once while its members are asked for (one tar cached)."""

    def __init__(self, max_pixels: int, max_file_bytes: int) -> None:
        self.max_pixels, self.max_file_bytes = max_pixels, max_file_bytes
        self._tar_url: Optional[str] = None
        self._tar: dict[str, bytes] = {}

    def _bytes(self, loc: Located) -> bytes:
        if not loc.in_tar:
            from supirkit.datapipe.sources import read_bytes

            return read_bytes(loc.uri, max_bytes=self.max_file_bytes)
        if loc.uri != self._tar_url:
            from supirkit.datapipe.tario import read_shard, sample_image

            samples = read_shard(loc.uri, max_member_bytes=self.max_file_bytes)
            self._tar = {s["__key__"]: sample_image(s)[1] for s in samples}
            self._tar_url = loc.uri
        data = self._tar.get(loc.key)
        if data is None:
            raise FileNotFoundError(f"{loc.source}: member gone")
        return data

    def read(self, loc: Located) -> np.ndarray:
        from supirkit.datapipe.decode import decode_rgb

        return decode_rgb(self._bytes(loc), self.max_pixels)[0]


def fit_to_reference(restored: np.ndarray, reference: Optional[np.ndarray], mode: str) -> tuple[np.ndarray, str]:
    """The restored image at the reference's size ('resize': bicubic), or an error text ('error')."""
    if reference is None or restored.shape == reference.shape:
        return restored, ""
    if mode == "resize":
        from PIL import Image

        size = (reference.shape[1], reference.shape[0])
        return np.asarray(Image.fromarray(restored).resize(size, Image.Resampling.BICUBIC)), ""
    return restored, (f"size_mismatch: restored {restored.shape[1]}x{restored.shape[0]}, reference "
                      f"{reference.shape[1]}x{reference.shape[0]}")
