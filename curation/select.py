"""Selection: rules and duplicate groups turn the scored rows into decisions, the scores table and a
write plan. It reads only tables (no pixels), so new thresholds re-select in seconds.

Four small steps, in order:
1. ``rule_verdicts``: every row's failed rules, and the members of each duplicate group with their rank;
2. ``group_winners``: the member kept in each group (the best-ranked one that passes the rules);
3. ``decide``: one row's decision (accepted, or the reason and stage that rejected it), counted in the ``Funnel``;
4. the scores parts (a row per input, every column typed) and the ``WritePlan`` (the accepted sources,
   cut into one part per output shard).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Optional

from supirkit.curation.config import CurateConfig
from supirkit.curation.dedup import load_groups
from supirkit.curation.keep import columns_for, rank
from supirkit.curation.rules import CompiledRules, compile_rules
from supirkit.curation.stages import CurateFolders
from supirkit.datapipe.files import atomic_write_parquet, read_json_or_none
from supirkit.datapipe.sinks import rows_to_table

#: columns of the scores table that are bookkeeping, not signals (left out of each sample's scores)
NOT_SIGNALS = {"order", "partition", "source", "source_uri", "bytes", "status", "stage", "reason", "detail",
               "key", "format", "clip_embedding", "accepted", "failed_rules", "dup_group", "duplicate_of"}
#: columns the selection adds to the scoring rows, with their Arrow types
SELECTION_COLUMNS = (("accepted", "bool"), ("reason", "string"), ("stage", "string"), ("detail", "string"),
                     ("failed_rules", "list<string>"), ("dup_group", "int64"), ("duplicate_of", "string"))


def partition_rows(folders: CurateFolders, index: int):
    """Signals (+ model scores, without embeddings) of one partition as an Arrow table, joined on ``order``."""
    import pyarrow.parquet as pq

    t = pq.read_table(folders.signals.part(index))
    t = t.drop_columns([c for c in ("clip_embedding",) if c in t.column_names])  # for dedup, not a score
    mp = folders.models.part(index)
    if mp.is_file():
        m = pq.read_table(mp)
        m = m.drop_columns([c for c in ("clip_embedding",) if c in m.column_names])
        if m.num_rows:
            t = t.join(m, keys="order", join_type="left outer").sort_by("order")
    return t


def _arrow_type(name: str):
    import pyarrow as pa

    return pa.list_(pa.string()) if name == "list<string>" else pa.bool_() if name == "bool" else getattr(pa, name)()


def scores_schema(folders: CurateFolders, n_parts: int):
    """One schema for every scores part (a part whose inputs all failed has no signal columns, one without
    duplicates no duplicate_of): readers of the table see every column whichever part comes first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pa.schema([f for f in pq.read_schema(folders.signals.part(i)) if f.name != "clip_embedding"])
               for i in range(n_parts)]
    for i in range(n_parts):
        mp = folders.models.part(i)
        if mp.is_file():
            m = pq.read_schema(mp)
            schemas.append(pa.schema([f for f in m if f.name not in ("order", "clip_embedding")]))
    schemas.append(pa.schema([(name, _arrow_type(t)) for name, t in SELECTION_COLUMNS]))
    return pa.unify_schemas(schemas, promote_options="permissive")


def _align(table, schema):
    import pyarrow as pa

    def column(f):
        # a column that is all missing here may carry a placeholder type (``sinks.rows_to_table``): its nulls
        # take the table's type whatever it is
        if f.name not in table.column_names or table.column(f.name).null_count == table.num_rows:
            return pa.nulls(table.num_rows, f.type)
        return table.column(f.name).cast(f.type)

    return pa.Table.from_arrays([column(f) for f in schema], schema=schema)


@dataclass
class Verdicts:
    """What the choice of each group's kept member needs: only the members of groups are held (the rule
    verdicts of every other row are computed again, partition by partition, when rows are decided)."""

    members: dict[int, list[tuple]] = field(default_factory=dict)  # group -> [(passes, rank, order)]
    source_of: dict[int, str] = field(default_factory=dict)  # order -> source, for members of groups


def rule_verdicts(folders: CurateFolders, n_parts: int, rules: CompiledRules, groups: dict[int, int],
                  rank_by: list[str]) -> Verdicts:
    import pyarrow as pa
    import pyarrow.compute as pc

    v = Verdicts()
    if not groups:
        return v
    members = pa.array(sorted(groups), pa.int64())
    for i in range(n_parts):
        t = partition_rows(folders, i)
        if t.num_rows == 0 or "order" not in t.column_names:
            continue
        t = t.filter(pc.and_(pc.is_in(t["order"], value_set=members), pc.equal(t["status"], "scored")))
        if t.num_rows == 0:
            continue
        failed = rules.evaluate_table(t)
        wanted = ["order", "source"] + columns_for(rank_by)
        cols = {c: t.column(c).to_pylist() for c in wanted if c in t.column_names}
        for r in range(t.num_rows):
            o = cols["order"][r]
            row = {c: cols[c][r] for c in cols}
            v.members.setdefault(groups[o], []).append((not rules.rejects(failed[r]), rank(row, rank_by), o))
            v.source_of[o] = cols["source"][r]
    return v


def group_winners(members: dict[int, list[tuple]]) -> dict[int, int]:
    """group -> order of the member kept: the best-ranked member that passes the rules (none may pass)."""
    kept = {}
    for g, ms in members.items():
        passing = [m for m in ms if m[0]]
        if passing:
            kept[g] = max(passing, key=lambda m: m[1])[2]
    return kept


@dataclass
class Funnel:
    """How many inputs survive each step (the report's funnel), and the rejections by reason and stage."""

    inputs: int = 0
    read: int = 0
    decoded: int = 0
    passed_prefilter: int = 0
    passed_rules: int = 0
    accepted: int = 0
    rejected_by_reason: dict = field(default_factory=dict)
    rejected_by_stage: dict = field(default_factory=dict)

    def count(self, row: dict, passed_rules: bool) -> None:
        self.inputs += 1
        status, stage = row.get("status"), row.get("stage")
        if stage != "read":
            self.read += 1
        if status == "scored" or stage == "decode":
            self.passed_prefilter += 1
        if status == "scored":
            self.decoded += 1
            self.passed_rules += int(passed_rules)
        if row["accepted"]:
            self.accepted += 1
        else:
            r, s = row.get("reason") or "unknown", row.get("stage") or "unknown"
            self.rejected_by_reason[r] = self.rejected_by_reason.get(r, 0) + 1
            self.rejected_by_stage[s] = self.rejected_by_stage.get(s, 0) + 1

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["unique"] = self.passed_rules - self.rejected_by_reason.get("duplicate", 0)
        return d


def decide(row: dict, failed: list[str], rules: CompiledRules, groups: dict[int, int], kept: dict[int, int],
           source_of: dict[int, str]) -> bool:
    """Fill the selection columns of one scored-or-rejected row; returns whether it passed the rules."""
    passed = False
    if row.get("status") == "scored":
        passed = not rules.rejects(failed)
        accepted = passed
        reason, stage = (None, None) if passed else (
            (failed[0] if rules.combine == "all" else "no_rule_passed"), "rules")
        row["failed_rules"] = list(failed)
        g = groups.get(row["order"])
        if passed and g is not None and kept.get(g) != row["order"]:
            accepted, reason, stage = False, "duplicate", "dedup"
            row["duplicate_of"] = source_of.get(kept.get(g))
        row.update(accepted=accepted, reason=reason, stage=stage)
    else:
        row.update(accepted=False, failed_rules=None)
    row["dup_group"] = groups.get(row.get("order"))
    return passed


class WritePlan:
    """The accepted sources in listing order, cut into parts of ``per_part`` (one output shard each)."""

    def __init__(self, folders: CurateFolders, per_part: int) -> None:
        self.folders, self.per_part = folders, per_part
        self.rows: list[dict] = []
        self.parts = 0

    def add(self, row: dict, others: list[str]) -> None:
        scores = {k: v for k, v in row.items() if k not in NOT_SIGNALS and v is not None}
        self.rows.append({"order": row["order"], "source": row["source"], "source_uri": row["source_uri"],
                          "key": row["key"], "scores_json": json.dumps(scores, default=float),
                          "duplicates": json.dumps(others) if others else None})
        self._flush(force=False)

    def _flush(self, force: bool) -> None:
        import pyarrow as pa

        while len(self.rows) >= self.per_part or (force and self.rows):
            chunk, self.rows = self.rows[:self.per_part], self.rows[self.per_part:]
            atomic_write_parquet(self.folders.plan_part(self.parts), pa.Table.from_pylist(chunk))
            self.parts += 1

    def close(self) -> int:
        self._flush(force=True)
        return self.parts


def select(folders: CurateFolders, cfg: CurateConfig, n_parts: int) -> dict:
    """Apply the rules and the duplicate groups; write the scores table and the write plan."""
    rules = compile_rules(cfg.rules)
    groups = load_groups(folders.dedup)
    if folders.select.exists():
        shutil.rmtree(folders.select)
    folders.select.mkdir(parents=True)
    verdicts = rule_verdicts(folders, n_parts, rules, groups, cfg.dedup.rank_by)
    kept = group_winners(verdicts.members)
    per_source = 1 if cfg.output.crop.mode != "grid" else cfg.output.crop.max_crops
    plan = WritePlan(folders, max(1, cfg.output.samples_per_shard // per_source))
    funnel = Funnel()
    folders.scores.mkdir(parents=True, exist_ok=True)
    schema = scores_schema(folders, n_parts)
    for i in range(n_parts):
        table = partition_rows(folders, i)
        rows = table.to_pylist()
        for row, failed in zip(rows, rules.evaluate_table(table)):
            passed = decide(row, failed, rules, groups, kept, verdicts.source_of)
            funnel.count(row, passed)
            if row["accepted"]:
                g = row["dup_group"]
                others = [verdicts.source_of[m[2]] for m in verdicts.members.get(g, []) if m[2] != row["order"]] \
                    if g is not None else []
                plan.add(row, others)
        atomic_write_parquet(folders.scores / f"scores-{i:06d}.parquet", _align(rows_to_table(rows), schema))
    return {"write_partitions": plan.close(), "funnel": funnel.to_dict(), "selection": rules.text}


def previous_selection(folders: CurateFolders) -> Optional[dict]:
    """The finished selection's record; None when there is none or it is damaged (selection is redone)."""
    done = read_json_or_none(folders.select / "_DONE.json")
    return done if isinstance(done, dict) else None


__all__ = ["select", "rule_verdicts", "group_winners", "decide", "Funnel", "WritePlan", "scores_schema",
           "partition_rows", "previous_selection", "NOT_SIGNALS"]
