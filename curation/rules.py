"""Selection rules: YAML checks compiled to the condition language of ``supirkit shard --where``.

Each check becomes one condition (``sharpness >= 0.11``; with ``if_missing: pass`` it becomes
``(jpeg_quality is None or jpeg_quality >= 61)``); the rule set becomes their conjunction (``all``)
or disjunction (``any``). The compiled text is written to summary.json, so the same selection can be
replayed with ``supirkit shard --from-manifest OUT/scores --where "..."``.
"""
from __future__ import annotations

from dataclasses import dataclass

from supirkit.curation.config import RuleCheckConfig, RulesConfig
from supirkit.datapipe.conditions import Condition


def _num(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


def check_condition(check: RuleCheckConfig) -> str:
    if check.where is not None:
        return f"({check.where})"
    parts = []
    if check.min is not None:
        parts.append(f"{check.signal} >= {_num(check.min)}")
    if check.max is not None:
        parts.append(f"{check.signal} <= {_num(check.max)}")
    text = " and ".join(parts)
    if check.if_missing == "pass":
        text = f"{check.signal} is None or {text}" if len(parts) == 1 else f"{check.signal} is None or ({text})"
    return f"({text})"


@dataclass
class CompiledRules:
    names: list[str]
    conditions: list[Condition]
    combine: str

    @property
    def text(self) -> str:
        """The whole selection as one condition (for ``supirkit shard --where``)."""
        if not self.conditions:
            return "True"
        joiner = " and " if self.combine == "all" else " or "
        return joiner.join(c.text for c in self.conditions)

    @property
    def columns(self) -> set[str]:
        out: set[str] = set()
        for c in self.conditions:
            out |= c.columns
        return out

    def failed(self, row: dict) -> list[str]:
        """Names of the checks that do not pass for one row (missing values fail, three-valued logic)."""
        return [n for n, c in zip(self.names, self.conditions) if not c.evaluate(row)]

    def rejects(self, failed: list[str]) -> bool:
        if not self.conditions:
            return False
        return bool(failed) if self.combine == "all" else len(failed) == len(self.conditions)

    def evaluate_table(self, table) -> list[list[str]]:
        """Failed check names per row of an Arrow table, evaluated with Arrow compute (vectorised)."""
        import pyarrow.dataset as pads

        table = _typed(table, self.columns)
        if not self.conditions:
            return [[] for _ in range(table.num_rows)]
        ds = pads.dataset(table)
        cols = {f"c{i}": c.to_arrow(table.schema) for i, c in enumerate(self.conditions)}
        res = ds.to_table(columns=cols)
        passed = [res.column(f"c{i}").to_pylist() for i in range(len(self.conditions))]
        out = []
        for r in range(table.num_rows):
            out.append([n for i, n in enumerate(self.names) if passed[i][r] is not True])
        return out


def _typed(table, columns: set[str]):
    """Columns the rules use but the table lacks (or holds only nulls) become typed null columns,
    so a check on a signal nobody computed fails as 'missing' instead of raising."""
    import pyarrow as pa

    for name in sorted(columns):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
        elif pa.types.is_null(table.schema.field(name).type):
            i = table.column_names.index(name)
            table = table.set_column(i, name, pa.nulls(table.num_rows, pa.float64()))
    return table


def compile_rules(cfg: RulesConfig) -> CompiledRules:
    names = [c.name for c in cfg.checks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        from supirkit.datapipe.config import ConfigError

        raise ConfigError(f"rules.checks: duplicate rule name(s) {dup}")
    return CompiledRules(names, [Condition(check_condition(c)) for c in cfg.checks], cfg.combine)


def thresholds(cfg: RulesConfig) -> dict[str, list[tuple[str, float]]]:
    """signal -> [(min|max, value)] for the report's histograms."""
    out: dict[str, list[tuple[str, float]]] = {}
    for c in cfg.checks:
        if c.signal is None:
            continue
        if c.min is not None:
            out.setdefault(c.signal, []).append(("min", c.min))
        if c.max is not None:
            out.setdefault(c.signal, []).append(("max", c.max))
    return out
