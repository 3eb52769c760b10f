"""Caption clean-up and counting against SDXL's 77-token text context.

SUPIR joins the caption and its quality prompt and encodes them with SDXL's two CLIP text encoders, which
see 77 tokens (``<start>``, 75 text tokens, ``<end>``); LLaVA's "very detailed" captions are often longer, so
the tail (the quality prompt first) is cut off. Every caption's count is therefore recorded.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from supirkit.captioning.config import DEFAULT_OPENINGS

log = logging.getLogger("supirkit")

_WS = re.compile(r"\s+")
_SPECIALS = re.compile(r"</s>|<s>|<unk>|<pad>|<image>")


class CaptionCleaner:
    """Raw LLaVA output -> caption: special tokens removed, whitespace (newlines too) collapsed, and a
    boilerplate opening ("The image shows", "In this image,") removed once from the start."""

    def __init__(self, openings: Iterable[str] = DEFAULT_OPENINGS, strip_openings: bool = True,
                 capitalize: bool = True) -> None:
        alternatives = "|".join(f"(?:{p})" for p in openings)
        self._opening = (
            re.compile(rf"^\s*(?:{alternatives})\s*", re.IGNORECASE) if strip_openings and alternatives else None
        )
        self.capitalize = capitalize

    def __call__(self, raw: str) -> str:
        text = _WS.sub(" ", _SPECIALS.sub(" ", raw)).strip()
        if self._opening is not None:
            stripped = self._opening.sub("", text, count=1)
            if stripped and stripped != text:
                text = stripped.lstrip(" ,:;-")
                if self.capitalize and text:
                    text = text[0].upper() + text[1:]
        return text


def clean_caption(raw: str, **kwargs) -> str:
    """``CaptionCleaner`` with the default openings."""
    return CaptionCleaner(**kwargs)(raw)


@dataclass(frozen=True)
class TokenCount:
    tokens: int  # text tokens, without <start>/<end>
    fits: bool  # tokens + 2 <= limit
    method: str  # "clip" (exact, the named tokenizer) or "estimate" (words + punctuation marks)


# CLIP's pre-tokenizer splits words, digits and punctuation; common English words are single BPE tokens, so
# one token per word or mark is a (slightly low) estimate of the real count.
_ESTIMATE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", re.UNICODE)


class TokenCounter:
    """Counts caption tokens with SDXL's CLIP tokenizer when it can be loaded, else estimates them."""

    def __init__(self, tokenizer: Optional[str], limit: int = 77, on_missing: str = "estimate") -> None:
        self.limit = limit
        self.source = tokenizer
        self._tok = _load_clip_tokenizer(tokenizer) if tokenizer else None
        if self._tok is None:
            if on_missing == "error":
                raise FileNotFoundError(f"CLIP tokenizer {tokenizer!r} could not be loaded (tokens.on_missing: error)")
            if tokenizer:
                log.warning("caption: CLIP tokenizer %r not available; token counts are estimates", tokenizer)
        self.method = "clip" if self._tok is not None else "estimate"

    def count(self, text: str) -> TokenCount:
        if self._tok is not None:
            n = len(self._tok(text, add_special_tokens=False, truncation=False).input_ids)
        else:
            n = len(_ESTIMATE.findall(text))
        return TokenCount(n, n + 2 <= self.limit, self.method)


def _load_clip_tokenizer(name: str):
    """An SDXL pipeline folder (tokenizer/), a tokenizer folder, or a hub id found in the local cache."""
    from transformers import CLIPTokenizer

    path = Path(name)
    attempts = []
    if path.is_dir():
        attempts = [dict(subfolder="tokenizer")] if (path / "tokenizer").is_dir() else [{}]
    else:
        attempts = [{}]
    for kwargs in attempts:
        try:
            tok = CLIPTokenizer.from_pretrained(name, **kwargs)
            if len(tok) < 256:  # transformers 5 builds an empty tokenizer when the files are missing
                log.debug("CLIP tokenizer %s: only %d tokens, treated as missing", name, len(tok))
                continue
            tok.model_max_length = 1 << 30  # we count beyond 77 on purpose: no "sequence too long" warnings
            return tok
        except (OSError, ValueError, TypeError) as exc:
            log.debug("CLIP tokenizer %s %s: %s", name, kwargs, exc)
    return None
