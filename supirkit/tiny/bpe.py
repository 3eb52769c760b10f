"""The merge table of a tiny BPE tokenizer, shared by the Llama (LLaVA) and CLIP (SDXL) tokenizers."""
from __future__ import annotations

from typing import Iterable


def add_word_merges(words: Iterable[list[str]], vocab_list: list[str], merges: list[tuple[str, str]]) -> None:
    """Extend ``merges`` so that each word (a list of starting symbols) becomes one token, merging left to
    right; every merge result not yet in ``vocab_list`` is appended to it, so ids follow first use."""
    seen = set(vocab_list)
    for symbols in words:
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            merged = symbols[0] + symbols[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in seen:
                seen.add(merged)
                vocab_list.append(merged)
            symbols = [merged] + symbols[2:]
