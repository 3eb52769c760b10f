"""The one prompt-assembly rule shared by training and restoring.

    text   = caption | tags | caption + separator + tags          (``prompt.source``, ``prompt_text``)
    prompt = text + separator + positive quality prompt          (either part may be empty)
    then both SDXL text encoders see at most 77 tokens (BOS and EOS included): the tail is cut.

Official SUPIR joins caption and positive prompt with *no* separator (``SUPIR_model.py:L164``), which glues
the caption's last word to "Cinematic"; we use ", " by default [I] (configurable, ``prompt.separator``).
LLaVA's "very detailed" captions often fill the 77 tokens on their own, so the quality words are frequently
cut; that is SUPIR's behaviour as well, and we keep the order (the caption describes *this* image and
matters more) but log every truncation with how much of the positive prompt survived.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


def prompt_text(caption: str, tags=(), source: str = "caption", separator: str = ", ") -> str:
    """What describes the image before the positive prompt (``prompt.source``): the caption (SUPIR), the
    tags as a comma-separated list (SeeSR's tag prompts), or the caption followed by the tags."""
    tag_text = ", ".join(t.strip() for t in tags if t and t.strip())
    if source == "tags":
        return tag_text
    if source == "both":
        return join_prompt(caption, tag_text, separator)
    return (caption or "").strip()


def join_prompt(caption: str, positive: str, separator: str = ", ") -> str:
    caption, positive = (caption or "").strip(), (positive or "").strip()
    if caption and positive:
        return f"{caption}{separator}{positive}"
    return caption or positive


@dataclass(frozen=True)
class AssembledPrompt:
    text: str  # what is handed to the text encoders (they cut it at max_tokens)
    n_tokens: int  # tokens of the full text, BOS/EOS included
    kept_tokens: int  # tokens the encoders actually see
    truncated: bool
    positive_kept: float  # fraction of the positive prompt's tokens that survive (1.0 when not truncated)


class PromptAssembler:
    """Assemble and measure prompts with the tokenizer the text encoders use (CLIP BPE, 77 tokens)."""

    def __init__(self, tokenizer=None, positive: str = "", separator: str = ", ", max_tokens: int = 77,
                 logger: logging.Logger | None = None):
        self.tokenizer = tokenizer
        self.positive = positive
        self.separator = separator
        self.max_tokens = max_tokens
        self.log = logger or log

    @classmethod
    def from_config(cls, prompt_config, tokenizer=None, logger=None) -> "PromptAssembler":
        return cls(tokenizer, prompt_config.positive, prompt_config.separator, prompt_config.max_tokens, logger)

    def _count(self, text: str) -> int:
        if self.tokenizer is None or not text:
            return 2 if self.tokenizer is not None else 0
        return len(self.tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"])

    def __call__(self, caption: str) -> AssembledPrompt:
        text = join_prompt(caption, self.positive, self.separator)
        if self.tokenizer is None:
            return AssembledPrompt(text, 0, 0, False, 1.0)
        n = self._count(text)
        truncated = n > self.max_tokens
        positive_kept = 1.0
        if truncated and self.positive.strip():
            pos_tokens = self._count(self.positive) - 2
            before = self._count(join_prompt(caption, "", self.separator) + self.separator.rstrip()) - 2
            room = max(0, (self.max_tokens - 2) - before)
            positive_kept = max(0.0, min(1.0, room / max(1, pos_tokens)))
        if truncated:
            self.log.info("prompt has %d tokens, the text encoders keep %d; %.0f%% of the positive prompt survives",
                          n, self.max_tokens, 100 * positive_kept)
        return AssembledPrompt(text, n, min(n, self.max_tokens), truncated, positive_kept)
