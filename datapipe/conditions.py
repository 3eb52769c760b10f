"""A small, safe condition language over metadata columns (no ``eval``).

    sharpness >= 0.35 and (jpeg_quality >= 80 or format != "JPEG") and not is_grayscale
    scores.musiq > 55       # dotted names address fields of struct columns (nested metadata)
    format in ["JPEG", "PNG"]
    caption is not None

Parsed with Python's ``ast`` and checked against a whitelist of node types, then compiled either to a
pyarrow compute expression (to filter parquet tables without loading them) or evaluated on one row.
Missing values follow SQL/Arrow three-valued logic: a comparison with a missing value is unknown,
and an unknown condition does not select the row.
"""
from __future__ import annotations

import ast
import operator
from typing import Any, Optional

_CMP = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}


class ConditionError(ValueError):
    pass


def _column_name(node: ast.AST) -> Optional[str]:
    """``a`` or ``a.b.c`` (a flattened column name); never evaluated as Python, and dunder parts are
    refused all the same so that a condition never even looks like attribute access."""
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Attribute):
        base = _column_name(node.value)
        name = f"{base}.{node.attr}" if base else None
    else:
        return None
    if name and any(part.startswith("__") for part in name.split(".")):
        raise ConditionError(f"column names may not start with '__': {name!r}")
    return name


def _constant(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _constant(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_constant(e) for e in node.elts]
    raise ConditionError(f"expected a constant, got {ast.unparse(node)!r}")


class Condition:
    """A parsed condition; ``str(cond)`` gives back its canonical text."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        if not self.text:
            raise ConditionError("empty condition")
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise ConditionError(f"cannot parse condition {text!r}: {exc.msg}") from None
        self.columns: set[str] = set()
        self._tree = self._check(tree.body)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    # -- validation: only boolean logic, comparisons, column names and constants are allowed
    def _check(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                self._check(v)
            return node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self._check(node.operand)
            return node
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:]):
                self._check_comparison(node, op, left, right)
            return node
        name = _column_name(node)
        if name:  # a bare boolean column
            self.columns.add(name)
            return node
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return node
        raise ConditionError(f"not allowed in a condition: {ast.unparse(node)!r}")

    def _check_comparison(self, node: ast.AST, op: ast.cmpop, left: ast.AST, right: ast.AST) -> None:
        if isinstance(op, (ast.In, ast.NotIn)):
            self._need_column(left)
            if not isinstance(_constant(right), list):
                raise ConditionError(f"'in' needs a list on the right: {ast.unparse(node)!r}")
        elif isinstance(op, (ast.Is, ast.IsNot)):
            self._need_column(left)
            if _constant(right) is not None:
                raise ConditionError("'is' compares with None only")
        elif type(op) in _CMP:
            if not any(_column_name(n) for n in (left, right)):
                raise ConditionError(f"comparison without a column: {ast.unparse(node)!r}")
            for side in (left, right):
                if _column_name(side):
                    self.columns.add(_column_name(side))
                else:
                    _constant(side)
        else:
            raise ConditionError(f"operator not allowed: {ast.unparse(node)!r}")

    def _need_column(self, node: ast.AST) -> None:
        name = _column_name(node)
        if not name:
            raise ConditionError(f"expected a column name, got {ast.unparse(node)!r}")
        self.columns.add(name)

    # -- row evaluation (three-valued)
    def evaluate(self, row: dict) -> bool:
        return self._eval(self._tree, row) is True

    def _value(self, node: ast.AST, row: dict) -> Any:
        name = _column_name(node)
        return row_value(row, name) if name else _constant(node)

    def _eval(self, node: ast.AST, row: dict) -> Optional[bool]:
        if isinstance(node, ast.BoolOp):
            vals = [self._eval(v, row) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in vals else (None if None in vals else True)
            return True if True in vals else (None if None in vals else False)
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, row)
            return None if v is None else not v
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            result: Optional[bool] = True
            for op, left, right in zip(node.ops, operands, operands[1:]):
                a, b = self._value(left, row), self._value(right, row)
                if isinstance(op, ast.Is):
                    r: Optional[bool] = a is None
                elif isinstance(op, ast.IsNot):
                    r = a is not None
                elif a is None or b is None:
                    r = None
                elif isinstance(op, ast.In):
                    r = a in b
                elif isinstance(op, ast.NotIn):
                    r = a not in b
                else:
                    try:
                        r = bool(_CMP[type(op)](a, b))
                    except TypeError:
                        r = None
                if r is False:
                    return False
                if r is None:
                    result = None
            return result
        if isinstance(node, ast.Constant):
            return bool(node.value)
        v = self._value(node, row)
        return None if v is None else bool(v)

    # -- arrow expression
    def to_arrow(self, schema=None):
        """A pyarrow expression; dotted names are nested field references (or a flat column of that exact
        name when ``schema`` has one)."""
        import pyarrow.compute as pc

        flat = set(schema.names) if schema is not None else set()
        return self._arrow(self._tree, pc, flat)

    @staticmethod
    def _field(name: str, pc, flat: set):
        if name in flat or "." not in name:
            return pc.field(name)
        return pc.field(*name.split("."))

    def _arrow_value(self, node: ast.AST, pc, flat: set):
        name = _column_name(node)
        return self._field(name, pc, flat) if name else pc.scalar(_constant(node))

    def _arrow(self, node: ast.AST, pc, flat: set):
        if isinstance(node, ast.BoolOp):
            exprs = [self._arrow(v, pc, flat) for v in node.values]
            out = exprs[0]
            for e in exprs[1:]:
                out = (out & e) if isinstance(node.op, ast.And) else (out | e)
            return out
        if isinstance(node, ast.UnaryOp):
            return ~self._arrow(node.operand, pc, flat)
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            parts = []
            for op, left, right in zip(node.ops, operands, operands[1:]):
                if isinstance(op, ast.Is):
                    parts.append(self._arrow_value(left, pc, flat).is_null())
                elif isinstance(op, ast.IsNot):
                    parts.append(~self._arrow_value(left, pc, flat).is_null())
                elif isinstance(op, ast.In):
                    parts.append(self._arrow_value(left, pc, flat).isin(_constant(right)))
                elif isinstance(op, ast.NotIn):
                    f = self._arrow_value(left, pc, flat)
                    parts.append(~f.isin(_constant(right)) & ~f.is_null())
                else:
                    parts.append(_CMP[type(op)](self._arrow_value(left, pc, flat), self._arrow_value(right, pc, flat)))
            out = parts[0]
            for p in parts[1:]:
                out = out & p
            return out
        if isinstance(node, ast.Constant):
            return pc.scalar(bool(node.value))
        return self._field(_column_name(node), pc, flat) == pc.scalar(True)


def row_value(row: dict, name: str) -> Any:
    """``row[name]``, or the nested field that the dotted ``name`` addresses; None when absent."""
    if name in row or "." not in name:
        return row.get(name)
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def column_paths(schema) -> list[str]:
    """Every column a condition can name: top-level columns and, dotted, the fields of struct columns."""
    import pyarrow as pa

    out: list[str] = []

    def walk(prefix: str, field) -> None:
        out.append(prefix + field.name)
        if pa.types.is_struct(field.type):
            for child in field.type:
                walk(prefix + field.name + ".", child)

    for f in schema:
        walk("", f)
    return out


def check_columns(cond: "Condition", schema, where: str = "") -> None:
    """``ConditionError`` naming the columns of ``cond`` that ``schema`` lacks (and those it has)."""
    known = set(column_paths(schema))
    missing = sorted(c for c in cond.columns if c not in known)
    if missing:
        top = ", ".join(schema.names)
        raise ConditionError(f"unknown column(s) {', '.join(missing)}{' in ' + where if where else ''}; "
                             f"available: {top}")


def filter_table(table, condition: Condition | str):
    """Rows of an Arrow table that satisfy ``condition`` (missing columns are an error naming them)."""
    cond = condition if isinstance(condition, Condition) else Condition(condition)
    check_columns(cond, table.schema)
    import pyarrow.dataset as pads

    return pads.dataset(table).to_table(filter=cond.to_arrow(table.schema))
