"""captioning: LLaVA captions (and optional tag prompts) for a shard set (``supirkit caption``).

Public API (heavy libraries load only when a model is built):
- ``CaptionConfig`` (schema of ``configs/caption/*.yaml``), ``run_caption_job(shards, out, cfg, fresh)``;
- ``CaptionStage`` (the ``datapipe`` stage: one input shard -> one captioned shard, one model per worker);
- ``TransformersCaptioner`` / ``VLLMCaptioner`` / ``load_backend(cfg)`` (batch of images -> ``Generation``s);
- ``CaptionCleaner`` / ``clean_caption`` and ``TokenCounter`` (clean-up, count against SDXL's 77 tokens);
- ``fit_image`` (pad / crop / none, as the captioner should see an image);
- ``TaggerConfig`` / ``load_tagger(cfg)`` / ``TAGGERS`` (``ClipTagger``: zero-shot open_clip over a vocabulary;
  ``ClassifierTagger``: a transformers image classifier): SeeSR-style tag prompts, written next to captions.
"""
from supirkit.captioning.backends import (
                                 BackendError,
                                 Generation,
                                 TransformersCaptioner,
                                 VLLMCaptioner,
                                 load_backend,
                                 render_prompt,
)
from supirkit.captioning.clean import CaptionCleaner, TokenCount, TokenCounter, clean_caption
from supirkit.captioning.config import SUPIR_INSTRUCTION, VICUNA_SYSTEM, CaptionConfig, TaggerConfig
from supirkit.captioning.images import fit_image
from supirkit.captioning.job import CaptionJobResult, CaptionStage, run_caption_job, token_report
from supirkit.captioning.tags import TAGGERS, ClassifierTagger, ClipTagger, TaggerError, load_tagger
from supirkit.datapipe.captions import format_tags

__all__ = [
    "BackendError", "Generation", "TransformersCaptioner", "VLLMCaptioner", "load_backend", "render_prompt",
    "CaptionCleaner", "TokenCount", "TokenCounter", "clean_caption", "SUPIR_INSTRUCTION", "VICUNA_SYSTEM",
    "CaptionConfig", "fit_image", "CaptionJobResult", "CaptionStage", "run_caption_job", "token_report",
    "TaggerConfig", "TAGGERS", "ClassifierTagger", "ClipTagger", "TaggerError", "format_tags", "load_tagger",
]
