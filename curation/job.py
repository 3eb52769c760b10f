"""``supirkit curate``: the whole job, each step resumable on its own.

    list sources -> plan partitions
    1. score   (CPU tasks)   header prefilter, decode, cheap signals  -> _signals/ (a row per input)
    2. models  (GPU actors)  pyiqa, aesthetics, CLIP embeddings       -> _models/   (when configured)
    3. group   (driver)      exact / near / semantic duplicate groups -> _dedup/
    4. select  (driver)      rules + best member of each group        -> scores/ (a row per input), _select/
    5. write   (CPU tasks)   re-read the selected sources only, crop, encode -> {prefix}-NNNNNN.tar at the top
    6. report                report.html + PNGs, summary.json

Steps 1-2 depend on the scoring config (its hash guards the folder: another scoring config needs
--fresh); steps 3-5 on the rest, so new thresholds re-select and rewrite without rescoring
(``--select-only`` guarantees that nothing is rescored).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from supirkit.curation.config import CurateConfig
from supirkit.curation.dedup import group_duplicates, load_groups
from supirkit.curation.rules import compile_rules
from supirkit.curation.stages import (MODELS_DIR, PLAN_DIR, SIGNALS_DIR, ModelStage, ScoreStage, WriteStage,
                             load_write_partition)
from supirkit.datapipe.config import ConfigError, ShardingConfig
from supirkit.datapipe.runner import JobResult, plan_partitions, prepare_output, run_stage, write_job_summary
from supirkit.datapipe.shards import rows_to_table

SCORES_DIR = "scores"
DEDUP_DIR = "_dedup"
STAGE_NAME = "curate"
#: columns of the scores table that are bookkeeping, not signals (left out of each sample's json)
NOT_SIGNALS = {"order", "partition", "source", "source_uri", "bytes", "status", "stage", "reason", "detail",
               "key", "format", "clip_embedding"}


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


def _parts(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}-*.parquet") if not p.name.startswith("."))


def _atomic_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _read_partition_rows(out: Path, index: int):
    """Signals (+ model scores) of one partition as an Arrow table, joined on ``order``."""
    import pyarrow.parquet as pq

    t = pq.read_table(out / SIGNALS_DIR / f"signals-{index:06d}.parquet")
    mp = out / MODELS_DIR / f"models-{index:06d}.parquet"
    if mp.is_file():
        m = pq.read_table(mp)
        m = m.drop_columns([c for c in ("clip_embedding",) if c in m.column_names])
        if m.num_rows:
            t = t.join(m, keys="order", join_type="left outer").sort_by("order")
    return t


#: columns the selection adds to the scoring rows
SELECTION_COLUMNS = (("accepted", "bool_"), ("reason", "string"), ("stage", "string"), ("detail", "string"),
                     ("failed_rules", "string"), ("dup_group", "int64"), ("duplicate_of", "string"))


def _scores_schema(out: Path, n_parts: int):
    """One schema for every scores part (a part whose inputs all failed has no signal columns, one
    without duplicates no duplicate_of): readers of the folder see every column whichever part is first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(out / SIGNALS_DIR / f"signals-{i:06d}.parquet") for i in range(n_parts)]
    for i in range(n_parts):
        mp = out / MODELS_DIR / f"models-{i:06d}.parquet"
        if mp.is_file():
            m = pq.read_schema(mp)
            schemas.append(pa.schema([f for f in m if f.name not in ("order", "clip_embedding")]))
    schemas.append(pa.schema([(name, getattr(pa, t)()) for name, t in SELECTION_COLUMNS]))
    return pa.unify_schemas(schemas, promote_options="permissive")


def _align(table, schema):
    import pyarrow as pa

    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _rank(row: dict, rank_by: list[str]) -> tuple:
    """Higher is better, column by column; a missing value ranks last, except a missing jpeg_quality,
    which means a lossless file and ranks above every JPEG (as 101). Ties: the earlier input."""
    vals = []
    for c in rank_by:
        v = row.get(c)
        if v is None and c == "jpeg_quality":
            v = 101
        vals.append(float("-inf") if v is None else float(v))
    return (*vals, -int(row["order"]))


def select(out: Path, cfg: CurateConfig, n_parts: int) -> dict:
    """Apply the rules and the duplicate groups; write scores/ and the write plan. Returns the funnel."""
    import pyarrow as pa

    rules = compile_rules(cfg.rules)
    groups = load_groups(out / DEDUP_DIR)
    plan_dir = out / PLAN_DIR
    if plan_dir.exists():
        shutil.rmtree(plan_dir)
    plan_dir.mkdir(parents=True)
    # pass 1: rule verdicts; keep what the group decision needs for members of groups
    verdicts: dict[int, list[list[str]]] = {}
    members: dict[int, list[tuple]] = {}
    source_of: dict[int, str] = {}
    for i in range(n_parts):
        t = _read_partition_rows(out, i)
        failed = rules.evaluate_table(t)
        verdicts[i] = failed
        cols = {c: t.column(c).to_pylist() for c in ["order", "status", "source"] + cfg.dedup.rank_by
                if c in t.column_names}
        for r in range(t.num_rows):
            o = cols["order"][r]
            if o in groups and cols["status"][r] == "scored":
                row = {c: cols[c][r] for c in cols}
                ok = not rules.rejects(failed[r])
                members.setdefault(groups[o], []).append((ok, _rank(row, cfg.dedup.rank_by), o))
                source_of[o] = cols["source"][r]
    kept: dict[int, int] = {}  # group -> order of the member kept
    for g, ms in members.items():
        passing = [m for m in ms if m[0]]
        if passing:
            kept[g] = max(passing, key=lambda m: m[1])[2]
    # pass 2: decisions, scores parts, write plan
    funnel = {"inputs": 0, "read": 0, "decoded": 0, "passed_prefilter": 0, "passed_rules": 0, "accepted": 0,
              "rejected_by_reason": {}, "rejected_by_stage": {}}
    plan_rows: list[dict] = []
    n_plan = 0
    per_source = 1 if cfg.output.crop.mode != "grid" else cfg.output.crop.max_crops
    sources_per_shard = max(1, cfg.output.samples_per_shard // per_source)

    def flush_plan(force: bool = False):
        nonlocal plan_rows, n_plan
        while len(plan_rows) >= sources_per_shard or (force and plan_rows):
            chunk, plan_rows = plan_rows[:sources_per_shard], plan_rows[sources_per_shard:]
            _atomic_parquet(pa.Table.from_pylist(chunk), plan_dir / f"plan-{n_plan:06d}.parquet")
            n_plan += 1

    (out / SCORES_DIR).mkdir(exist_ok=True)
    schema = _scores_schema(out, n_parts)
    for i in range(n_parts):
        t = _read_partition_rows(out, i)
        rows = t.to_pylist()
        out_rows = []
        for row, failed in zip(rows, verdicts[i]):
            funnel["inputs"] += 1
            status = row.get("status")
            stage = row.get("stage")
            if stage != "read":
                funnel["read"] += 1
            if status == "scored" or stage == "decode":
                funnel["passed_prefilter"] += 1
            if status == "scored":
                funnel["decoded"] += 1
                accepted = not rules.rejects(failed)
                reason, stage = (None, None) if accepted else (
                    (failed[0] if cfg.rules.combine == "all" else "no_rule_passed"), "rules")
                row["failed_rules"] = json.dumps(failed)
                if accepted:
                    funnel["passed_rules"] += 1
                    g = groups.get(row["order"])
                    if g is not None and kept.get(g) != row["order"]:
                        accepted, reason, stage = False, "duplicate", "dedup"
                        row["duplicate_of"] = source_of.get(kept.get(g))
                row["accepted"] = accepted
                row["reason"] = reason
                row["stage"] = stage
            else:
                row["accepted"] = False
                row["failed_rules"] = None
            row["dup_group"] = groups.get(row.get("order"))
            if row["accepted"]:
                funnel["accepted"] += 1
                g = row["dup_group"]
                scores = {k: v for k, v in row.items() if k not in NOT_SIGNALS and k not in (
                    "accepted", "failed_rules", "dup_group", "duplicate_of") and v is not None}
                plan = {"order": row["order"], "source": row["source"], "source_uri": row["source_uri"],
                        "key": row["key"], "scores_json": json.dumps(scores, default=float),
                        "duplicates": json.dumps([source_of[m[2]] for m in members.get(g, []) if m[2] != row["order"]])
                        if g is not None else None}
                plan_rows.append(plan)
                flush_plan()
            else:
                r, s = row.get("reason") or "unknown", row.get("stage") or "unknown"
                funnel["rejected_by_reason"][r] = funnel["rejected_by_reason"].get(r, 0) + 1
                funnel["rejected_by_stage"][s] = funnel["rejected_by_stage"].get(s, 0) + 1
            out_rows.append(row)
        table = _align(rows_to_table(out_rows), schema)
        _atomic_parquet(table, out / SCORES_DIR / f"scores-{i:06d}.parquet")
    flush_plan(force=True)
    funnel["unique"] = funnel["passed_rules"] - funnel["rejected_by_reason"].get("duplicate", 0)
    return {"write_partitions": n_plan, "funnel": funnel, "selection": rules.text}


def _raise_missing_weights(failed: list) -> None:
    """A weight file missing on a worker fails every model unit alike: say it once, as the one error
    it is (the runner reports remote failures as text, so the message is taken from there)."""
    import re

    for fail in failed:
        m = re.search(r"MissingWeightsError: ([^\n]+)", str(fail.get("error", "")))
        if m:
            from supirkit.curation.signals.models import MissingWeightsError

            raise MissingWeightsError(m.group(1).strip())


def _check_select_only(out: Path, cfg: CurateConfig) -> int:
    job = out / "_job.json"
    if not job.is_file():
        raise ConfigError(f"{out}: --select-only needs a finished scoring run in this folder; none found")
    prev = json.loads(job.read_text())
    if prev.get("config_hash") != cfg.scoring_hash():
        raise ConfigError(f"{out}: --select-only: the scoring part of the config (input, decode, prefilter, "
                          "signals) differs from the one the scores were made with; rerun without --select-only "
                          "and with --fresh to rescore")
    done = json.loads((out / "_partitions" / "_DONE.json").read_text())
    n = int(done["partitions"])
    missing = [i for i in range(n) if not (out / SIGNALS_DIR / f"signals-{i:06d}.stats.json").is_file()]
    if cfg.needs_models:
        missing += [i for i in range(n) if not (out / MODELS_DIR / f"models-{i:06d}.stats.json").is_file()]
    if missing:
        raise ConfigError(f"{out}: --select-only: scoring is incomplete ({len(missing)} partition(s) missing); "
                          "rerun without --select-only to finish it")
    return n


def _clear_shards(out: Path, prefix: str) -> None:
    for p in out.iterdir():
        if p.name.startswith(f"{prefix}-") and p.suffix in (".tar", ".parquet", ".json"):
            p.unlink()


def run_curate_job(sources: Iterable[str] | None, out: str | Path, cfg: CurateConfig, fresh: bool = False,
                   select_only: bool = False) -> CurateResult:
    from supirkit.datapipe.sources import list_inputs

    sources = [os.fsdecode(s) for s in (sources or [])]
    out = Path(out)
    chash = cfg.scoring_hash()
    if select_only:
        if fresh:
            raise ConfigError("--select-only and --fresh exclude each other (--fresh deletes the scores)")
        n = _check_select_only(out, cfg)
    else:
        if not sources:
            raise ConfigError("give at least one SRC (or --select-only to re-select an existing run)")
        out = prepare_output(out, STAGE_NAME, chash, fresh, sources=sources)
        sharding = ShardingConfig(samples_per_shard=cfg.input.inputs_per_partition,
                                  target_bytes=cfg.input.bytes_per_partition)
        n = plan_partitions(list_inputs(sources), out, sharding)
    result = CurateResult(out)
    if not select_only:
        scored = run_stage(ScoreStage(cfg), out, out / SIGNALS_DIR, n, cfg.runner, chash, prefix="signals",
                           desc="curate: score")
        result.failed += scored.failed
        if scored.ok and cfg.needs_models:
            modeled = run_stage(ModelStage(cfg, str(out)), out, out / MODELS_DIR, n, cfg.runner, chash,
                                prefix="models", desc="curate: models")
            _raise_missing_weights(modeled.failed)
            result.failed += modeled.failed
        if result.failed:
            return result
    dedup = group_duplicates(_parts(out / SIGNALS_DIR, "signals"), _parts(out / MODELS_DIR, "models"),
                             out / DEDUP_DIR, cfg.dedup, cfg.dedup_hash())
    # selection: redone only when the rules/dedup/output config changed; then old shards go
    sel_marker = out / PLAN_DIR / "_DONE.json"
    shash = cfg.selection_hash()
    done = json.loads(sel_marker.read_text()) if sel_marker.is_file() else {}
    if done.get("hash") != shash:
        old_prefix = done.get("prefix")
        if old_prefix:
            _clear_shards(out, old_prefix)
        _clear_shards(out, cfg.output.prefix)
        sel = select(out, cfg, n)
        done = {"hash": shash, "prefix": cfg.output.prefix, **sel}
        sel_marker.write_text(json.dumps(done, indent=1))
    result.funnel, result.selection = done["funnel"], done["selection"]
    write = run_stage(WriteStage(cfg), out, out, done["write_partitions"], cfg.runner, shash,
                      prefix=cfg.output.prefix, desc="curate: write", partition_loader=load_write_partition)
    result.write = write
    result.failed += write.failed
    funnel = dict(done["funnel"], training_samples=write.samples)
    extra = {"funnel": funnel, "selection_condition": done["selection"], "dedup": dedup,
             "scoring_hash": chash, "selection_hash": shash, "subset": cfg.output.subset,
             "prefix": cfg.output.prefix, "scores": str(out / SCORES_DIR)}
    result.funnel = funnel
    if write.ok and cfg.report.enabled:
        from supirkit.curation.report import write_report

        extra["report"] = str(write_report(out, cfg, funnel, done["selection"]))
    write_job_summary(out, STAGE_NAME, write, extra=extra)
    return result
