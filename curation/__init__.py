"""curation: choose the training images the job users submit first.

    from supirkit.curation import CurateConfig, run_curate_job
    result = run_curate_job(["photos/"], "curated/", CurateConfig())

Signals are small pluggable scorers (``curation.signals``); rules are YAML checks compiled to the
``datapipe.conditions`` language (``curation.rules``); duplicates are grouped globally
(``curation.dedup``); the job and its resumable passes live in ``curation.job`` / ``curation.stages``.
"""
from supirkit.curation.config import CurateConfig
from supirkit.curation.crops import CropBox, plan_crops
from supirkit.curation.job import CurateResult, run_curate_job, select
from supirkit.curation.rules import compile_rules

__all__ = ["CurateConfig", "CurateResult", "run_curate_job", "select", "compile_rules", "CropBox", "plan_crops"]
