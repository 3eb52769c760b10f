"""``supirkit curate``: the whole job, each step resumable on its own.

    list sources -> plan partitions
    1. score   (CPU tasks, or GPU actors fed by CPU tasks when learned signals are configured)
                             header prefilter, ONE decode, cheap signals, pyiqa, aesthetics, CLIP embeddings
                                                                  -> work/signals (a row per input)
    2. group   (driver)      exact / near / semantic duplicate groups -> work/dedup
    3. select  (driver)      rules + best member of each group        -> scores table (a row per input), plan
    4. write   (CPU tasks)   re-read the selected sources only, decode, crop, encode -> {prefix}-NNNNNN.tar
    5. report                report.html + PNGs, summary.json (in __supirkit__/)

Step 1 depends on the scoring config (its hash guards the folder: another scoring config needs --fresh);
steps 2-4 on the rest, so new thresholds re-select and rewrite without rescoring (``--select-only``
guarantees that nothing is rescored). Each input is decoded once to be scored, each accepted one once more
to be written. (Work folders scored by an earlier version, with the learned signals in ``work/models``, are
still read.)
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from supirkit.curation.config import CurateConfig
from supirkit.curation.dedup import group_duplicates
from supirkit.curation.select import previous_selection, select
from supirkit.curation.stages import CurateFolders, ScoreStage, WriteStage
from supirkit.datapipe.config import ShardingConfig
from supirkit.datapipe.errors import ConfigError, MissingWeights
from supirkit.datapipe.files import atomic_write_json, read_bookkeeping
from supirkit.datapipe.plan import partitions_dir, plan_partitions, planned_inputs
from supirkit.datapipe.runner import Pass, acquire_output, prepare_output, release_output, run_stage, write_job_summary
from supirkit.datapipe.shard_format import ShardSetLayout
from supirkit.datapipe.sinks import ShardOutput
from supirkit.datapipe.stats import JobResult

STAGE_NAME = "curate"


@dataclass
class CurateResult:
    out: Path
    write: Optional[JobResult] = None
    failed: list = field(default_factory=list)
    funnel: dict = field(default_factory=dict)
    selection: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed


def _parts(output) -> list[Path]:
    return sorted(p for p in output.folder.glob(f"{output.prefix}-*.parquet") if not p.name.startswith("."))


def _raise_missing_weights(failed: list) -> None:
    """A weight file missing on a worker fails every model unit alike: say it once, as the one error it is."""
    for fail in failed:
        if fail.error_type == MissingWeights.__name__:
            raise MissingWeights(fail.error.split(": ", 1)[-1])


def preflight_models(cfg: CurateConfig) -> None:
    """Every model the config names is on this machine, checked before any output is made (the learned
    scorers run after the whole CPU scoring pass: a missing file found there would cost that pass):
    ``MissingWeights`` with one line per missing model. Nothing is downloaded."""
    from supirkit.metrics import missing_weights
    from supirkit.metrics.loading import check_open_clip

    s = cfg.signals
    lines = missing_weights(s.iqa.metrics) if s.iqa.metrics and s.iqa.pretrained else []
    a = s.aesthetic
    if a.enabled or cfg.dedup.semantic.enabled:
        try:
            check_open_clip(a.clip_model, a.clip_weights, hint="give signals.aesthetic.clip_weights as a local file")
        except MissingWeights as exc:
            lines.append(f"aesthetic: {exc}")
    if a.enabled and not a.head_weights:
        lines.append("aesthetic: signals.aesthetic.head_weights is not set: give the LAION aesthetic MLP file "
                     "(e.g. sac+logos+ava1-l14-linearMSE.pth)")
    elif a.enabled and not Path(os.path.expanduser(a.head_weights)).is_file():
        lines.append(f"aesthetic: head weights not found: place the file at {a.head_weights}")
    if lines:
        raise MissingWeights("\n".join(lines))


def _check_select_only(layout: ShardSetLayout, folders: CurateFolders, cfg: CurateConfig) -> int:
    if not layout.job_file.is_file():
        raise ConfigError(f"{layout.root}: --select-only needs a finished scoring run in this folder; none found")
    prev = read_bookkeeping(layout.job_file, "job record")
    if prev.get("config_hash") != cfg.scoring_hash():
        raise ConfigError(f"{layout.root}: --select-only: the scoring part of the config (input, decode, prefilter, "
                          "signals) differs from the one the scores were made with; rerun without --select-only "
                          "and with --fresh to rescore")
    n = int(read_bookkeeping(partitions_dir(layout.work) / "_DONE.json", "partition plan marker")["partitions"])
    missing = [i for i in range(n) if not folders.signals.marker(i).is_file()]
    if missing:
        raise ConfigError(f"{layout.root}: --select-only: scoring is incomplete ({len(missing)} partition(s) "
                          "missing); rerun without --select-only to finish it")
    return n


def _clear_shards(layout: ShardSetLayout, prefix: str) -> None:
    """Remove a previous selection's shards (their stats markers first: a crash leaves no done shard behind)."""
    for folder, suffix in ((layout.stats_dir, ".json"), (layout.index_dir, ".parquet"), (layout.root, ".tar")):
        if folder.is_dir():
            for p in folder.glob(f"{prefix}-*{suffix}"):
                p.unlink()


def _score(sources: list[str], layout: ShardSetLayout, folders: CurateFolders, cfg: CurateConfig,
           result: CurateResult) -> int:
    """Step 1; returns the partition count."""
    from supirkit.datapipe.sources import list_inputs

    chash = cfg.scoring_hash()
    sharding = ShardingConfig(samples_per_shard=cfg.input.inputs_per_partition,
                              target_bytes=cfg.input.bytes_per_partition)
    listing = list_inputs(sources, follow_symlinks_outside=cfg.listing.follow_symlinks_outside)
    n = plan_partitions(listing, layout.work, sharding)
    inputs = planned_inputs(layout.work)
    scored = run_stage(Pass(ScoreStage(cfg), folders.signals, n, layout.work, chash, "curate: score", inputs),
                       cfg.runner)
    _raise_missing_weights(scored.failed)
    result.failed += scored.failed
    return n


def _selection(layout: ShardSetLayout, folders: CurateFolders, cfg: CurateConfig, n: int) -> dict:
    """Step 4, redone only when the rules, dedup or output config changed (then the old shards go)."""
    shash = cfg.selection_hash()
    done = previous_selection(folders) or {}
    if done.get("hash") != shash:
        if done.get("prefix"):
            _clear_shards(layout, done["prefix"])
        _clear_shards(layout, cfg.output.prefix)
        done = {"hash": shash, "prefix": cfg.output.prefix, **select(folders, cfg, n)}
        atomic_write_json(folders.select / "_DONE.json", done)
    return done


def run_curate_job(sources: Iterable[str] | None, out: str | Path, cfg: CurateConfig, fresh: bool = False,
                   select_only: bool = False) -> CurateResult:
    sources = [os.fsdecode(s) for s in (sources or [])]
    if select_only:
        if fresh:
            raise ConfigError("--select-only and --fresh exclude each other (--fresh deletes the scores)")
        layout = ShardSetLayout(Path(out).absolute())
        folders = CurateFolders(layout)
        if not layout.job_file.is_file():
            raise ConfigError(f"{layout.root}: --select-only needs a finished scoring run in this folder; none found")
        acquire_output(layout)
        n = _check_select_only(layout, folders, cfg)
    else:
        if not sources:
            raise ConfigError("give at least one SRC (or --select-only to re-select an existing run)")
        preflight_models(cfg)
        layout = prepare_output(out, STAGE_NAME, cfg.scoring_hash(), fresh, sources=sources)
        folders = CurateFolders(layout)
    result = CurateResult(layout.root)
    if not select_only:
        n = _score(sources, layout, folders, cfg, result)
        if result.failed:
            return result
    # the CLIP embeddings are in the scores' own parts (or, scored by an earlier version, in work/models)
    dedup = group_duplicates(_parts(folders.signals), _parts(folders.models) or _parts(folders.signals),
                             folders.dedup, cfg.dedup, cfg.dedup_hash(), cfg.runner)
    done = _selection(layout, folders, cfg, n)
    result.funnel, result.selection = done["funnel"], done["selection"]
    write = run_stage(Pass(WriteStage(cfg, folders), ShardOutput(layout.root, cfg.output.prefix),
                           done["write_partitions"], layout.work, done["hash"], "curate: write",
                           done["funnel"]["accepted"]), cfg.runner)
    result.write = write
    result.failed += write.failed
    funnel = dict(done["funnel"], training_samples=write.samples)
    # one set of rejection counts for the summary, the last line and the report: the selection's (every
    # input that was not accepted) plus the write pass's (sources gone or too small since scoring)
    rejected = Counter(funnel["rejected_by_reason"])
    rejected.update(write.rejected)
    funnel["rejected_by_reason"] = dict(sorted(rejected.items()))
    extra = {"funnel": funnel, "selection_condition": done["selection"], "dedup": dedup,
             "scoring_hash": cfg.scoring_hash(), "selection_hash": done["hash"], "subset": cfg.output.subset,
             "prefix": cfg.output.prefix, "scores": str(folders.scores),
             "pattern": layout.pattern(cfg.output.prefix, done["write_partitions"])}
    result.funnel = funnel
    if write.ok and cfg.report.enabled:
        from supirkit.curation.report import write_report

        extra["report"] = str(write_report(layout, folders, cfg, funnel, done["selection"]))
    write.rejected = rejected
    write_job_summary(layout, STAGE_NAME, write, extra=extra)
    release_output(layout)
    return result
