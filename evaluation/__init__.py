"""evaluation: paired test sets and scores of restorations against them, the way the papers measure.

* ``TestsetConfig`` / ``run_testset_job(sources, out, cfg)`` (``supirkit testset``): deterministic (HQ crop,
  LQ, parameters) pairs by any degradation profile, written as resumable shards and hq/ lq/ folders;
* ``EvaluateConfig`` / ``run_evaluate(pred, ref, out, cfg)`` (``supirkit evaluate``): every metric of
  ``supirkit.metrics`` on images matched by key; per-image parquet, summary tables (CSV, markdown in the
  papers' layout, conventions stated), best/worst crops page.
"""
from supirkit.evaluation.evaluate import DEFAULT_METRICS, EvaluateConfig, EvaluateResult, run_evaluate
from supirkit.evaluation.testset import TestsetConfig, export_folders, run_testset_job

__all__ = ["DEFAULT_METRICS", "EvaluateConfig", "EvaluateResult", "run_evaluate", "TestsetConfig", "export_folders",
           "run_testset_job"]
