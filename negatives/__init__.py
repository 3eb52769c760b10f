"""negatives: negative-quality samples made with SDXL (``supirkit negatives``), a stage of its own.

    from supirkit.negatives import NegativesConfig, run_negatives_job
    result = run_negatives_job(["curated/"], "negatives/", NegativesConfig())

Built on ``supirkit.datapipe`` (sources, shards, exactly-once runner); the SDXL pipeline comes from diffusers
and is imported only when a worker sets the stage up.
"""
from supirkit.negatives.config import NegativesConfig
from supirkit.negatives.job import NegativesStage, run_negatives_job

__all__ = ["NegativesConfig", "NegativesStage", "run_negatives_job"]
