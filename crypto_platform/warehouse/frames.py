"""Lake DataFrame -> one canonical Arrow table per load, validated before anything is written.

Why validate in Python first: MySQL's ``LOAD DATA LOCAL`` turns bad values into warnings, SQLite
enforces no widths at all, and a multi-row statement error says "at row N" of one statement. Checking
every value here (decimal fit, string width, NULL in a NOT NULL column) gives the same answer on all
three warehouses and names the row by its natural key. The databases still run in strict mode as a
second line of defence, inside a transaction.

The canonical table is what every backend writes: ``decimal128(38,18)`` for prices and sizes (Parquet
for Snowflake, fixed-point text with exactly 18 decimals for MySQL/SQLite), int64 for times, ids and
counts, strings, booleans and dates. Parity hashes the same representation.

Input decimals may be ``decimal.Decimal`` objects in object columns, decimal strings, or pyarrow
``decimal128`` (pandas ``ArrowDtype``); floats are refused, because they are not exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.warehouse.errors import RowRejectedError, WarehouseLoadError
from crypto_platform.warehouse.tables import (
    DECIMAL_INTEGER_DIGITS,
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    Column,
    Table,
)

DECIMAL_TYPE = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
_Q = Decimal(1).scaleb(-DECIMAL_SCALE)
_LIMIT = Decimal(10) ** DECIMAL_INTEGER_DIGITS

ARROW_TYPES: dict[str, pa.DataType] = {
    "str": pa.string(),
    "text": pa.string(),
    "int": pa.int64(),
    "dec": DECIMAL_TYPE,
    "bool": pa.bool_(),
    "date": pa.date32(),
}


@dataclass(frozen=True)
class Prepared:
    """A validated, de-duplicated batch for one table, in the canonical Arrow types."""

    table: Table
    data: pa.Table  # columns = the table's loader columns at the target schema version, in order
    dropped_duplicates: int = 0

    @property
    def num_rows(self) -> int:
        return self.data.num_rows

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.data.column_names)

    def key_of(self, index: int) -> dict[str, Any]:
        return {k: self.data.column(k)[index].as_py() for k in self.table.key}

    def text_columns(self) -> list[list[Any]]:
        """Column-wise Python values for SQL drivers: decimals as fixed-point text, bools as 0/1."""
        return [sql_values(self.table.column(name), self.data.column(name)) for name in self.columns]

    def rows(self) -> list[tuple[Any, ...]]:
        return list(zip(*self.text_columns(), strict=True))


def describe_row(table: Table, key: dict[str, Any], index: int | None = None) -> str:
    where = f"row {index} " if index is not None else ""
    return f"{table.name} {where}(" + ", ".join(f"{k}={v!r}" for k, v in key.items()) + ")"


def decimal_text_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """decimal128(38,18) -> fixed-point text with exactly 18 decimals (never scientific notation), as Arrow.

    Arrow writes values below 1e-6 (zero included) as ``0E-18`` / ``1.5E-10``; only those few are
    re-rendered in Python, everything else stays in Arrow kernels (the LOAD DATA file of a 1M-row day).
    """
    text = pc.cast(arr, pa.string())
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    sci = pc.fill_null(pc.match_substring(text, "E"), False)
    if not pc.any(sci).as_py():
        return text
    fixed = [format(Decimal(v).quantize(_Q), "f") for v in pc.filter(text, sci).to_pylist()]
    return pc.replace_with_mask(text, sci, pa.array(fixed, type=pa.string()))


def decimal_text(arr: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """decimal128(38,18) -> fixed-point text with exactly 18 decimals, as Python strings (DB-API values)."""
    out: list[str | None] = decimal_text_array(arr).to_pylist()
    return out


def sql_values(col: Column, arr: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The Python values a DB-API driver gets for one canonical column."""
    if col.kind == "dec":
        return decimal_text(arr)
    if col.kind == "bool":
        return pc.cast(arr, pa.int8()).to_pylist()
    if col.kind == "date":
        return pc.cast(arr, pa.string()).to_pylist()
    return arr.to_pylist()


def decimal_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored in DECIMAL(38,18), or None if it can (None/NaN count as NULL)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return f"{value!r} is a float; prices and sizes must be exact decimals"
    if isinstance(value, bool):
        return f"{value!r} is not a number"
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return f"{value!r} is not a number"
    if not d.is_finite():
        return f"{d} is not a finite number"
    with localcontext() as ctx:
        ctx.prec = 100
        if abs(d) >= _LIMIT:
            return f"{d} has more than {DECIMAL_INTEGER_DIGITS} digits before the decimal point"
        if d.quantize(_Q) != d:
            return f"{d} has more than {DECIMAL_SCALE} decimal places"
    return None


def _to_decimal_array(table: Table, col: Column, series: pd.Series, keys: pd.DataFrame) -> pa.Array:
    try:
        if isinstance(series.dtype, pd.ArrowDtype):
            return pc.cast(pa.array(series), DECIMAL_TYPE)
        values = series.tolist()
        if any(isinstance(v, str) for v in values):
            values = [Decimal(v) if isinstance(v, str) else v for v in values]
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        if any(isinstance(v, float) for v in values):
            raise TypeError("float")
        return pa.array(values, type=DECIMAL_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, InvalidOperation):
        pass
    for i, value in enumerate(series.tolist()):
        problem = decimal_problem(value)
        if problem:
            _reject(table, keys, i, col.name, f"{col.name}={problem}: does not fit DECIMAL(38,18)")
    raise WarehouseLoadError(f"{table.name}.{col.name}: values could not be converted to DECIMAL(38,18)")


def _to_string_array(series: pd.Series) -> pa.Array:
    try:
        return pa.array(series, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if pd.isna(v) else str(v) for v in series.tolist()], type=pa.string())


def _to_date_array(series: pd.Series) -> pa.Array:
    values: list[date | None] = []
    for v in series.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
            values.append(None)
        elif isinstance(v, datetime):
            values.append(v.date())
        elif isinstance(v, date):
            values.append(v)
        else:
            values.append(date.fromisoformat(str(v)[:10]))
    return pa.array(values, type=pa.date32())


def _reject(table: Table, keys: pd.DataFrame, index: int, column: str, why: str) -> None:
    key = {k: _plain(v) for k, v in keys.iloc[index].items()}
    raise RowRejectedError(f"{describe_row(table, key, index)}: {why}", table=table.name, row=key, column=column)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def _convert(table: Table, col: Column, series: pd.Series, keys: pd.DataFrame, check: bool = True) -> pa.Array:
    if col.kind == "dec":
        return _to_decimal_array(table, col, series, keys)
    try:
        if col.kind in ("str", "text"):
            arr = _to_string_array(series)
        elif col.kind == "date":
            arr = _to_date_array(series)
        else:
            arr = pa.array(series, type=ARROW_TYPES[col.kind], from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
        for i, value in enumerate(series.tolist()):
            try:
                pa.array([value], type=ARROW_TYPES[col.kind], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError):
                _reject(table, keys, i, col.name, f"{col.name}={value!r} is not a valid {col.kind}")
        raise WarehouseLoadError(f"{table.name}.{col.name}: cannot convert to {col.kind}: {exc}") from None
    if check and col.kind == "str" and col.length and len(arr):
        lengths = pc.utf8_length(arr)
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > col.length:
            i = pc.index(pc.greater(lengths, col.length), True).as_py()
            _reject(table, keys, i, col.name, f"{col.name} is {longest} characters long; the column holds {col.length}")
    return arr


def prepare(table: Table, frame: pd.DataFrame, version: int | None = None, *, check: bool = True) -> Prepared:
    """Validate ``frame`` against ``table`` and return the canonical batch (last duplicate key wins).

    Columns the table does not know are ignored (the lake carries lineage the warehouse does not
    need); a missing nullable column becomes NULL; a missing NOT NULL column is an error. When the
    frame has ``is_current`` (aggregates keep every revision in the lake), only current rows load.
    """
    from crypto_platform.warehouse.migrations import SCHEMA_VERSION

    columns = table.columns_at(version or SCHEMA_VERSION)
    if "is_current" in frame.columns and "is_current" not in table.names:
        frame = frame[frame["is_current"].fillna(False).astype(bool)]
    missing = [c.name for c in columns if c.name not in frame.columns and not c.nullable]
    if missing:
        raise WarehouseLoadError(
            f"{table.name}: the DataFrame lacks required column(s) {', '.join(missing)} "
            f"(it has {', '.join(map(str, frame.columns))})"
        )
    frame = frame.reset_index(drop=True)
    dropped = 0
    if len(frame):
        dup = frame.duplicated(subset=list(table.key), keep="last")
        dropped = int(dup.sum())
        if dropped:
            frame = frame[~dup].reset_index(drop=True)
    keys = frame[list(table.key)]
    arrays: list[pa.Array] = []
    for col in columns:
        if col.name not in frame.columns:
            arrays.append(pa.nulls(len(frame), type=ARROW_TYPES[col.kind]))
            continue
        arr = _convert(table, col, frame[col.name], keys, check)
        if check and not col.nullable and arr.null_count:
            i = pc.index(pc.is_null(arr), True).as_py()
            _reject(table, keys, i, col.name, f"{col.name} is NULL but the column is NOT NULL")
        arrays.append(arr)
    data = pa.Table.from_arrays(arrays, names=[c.name for c in columns])
    return Prepared(table=table, data=data, dropped_duplicates=dropped)


def empty_frame(table: Table, names: Sequence[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({n: pd.Series([], dtype=object) for n in (names or table.names)})


# ------------------------------------------------------------------------------------------------
# landing-segment lineage (per-batch loads resume after a watermark)


def segment_mask(frame: pd.DataFrame, after: int | None, upto: int | None = None) -> pd.Series:
    """Rows whose ``segment`` is in ``(after, upto]``, plus rows without a segment (REST repair rows).

    ``after=None`` means no lower bound (nothing loaded yet); ``upto=None`` no upper bound.
    """
    if "segment" not in frame.columns:
        return pd.Series(True, index=frame.index)
    seg = pd.to_numeric(frame["segment"]).astype("Float64")  # nullable, whatever the input dtype
    keep = pd.Series(True, index=frame.index)
    if after is not None:
        keep &= (seg > after).fillna(False)
    if upto is not None:
        keep &= (seg <= upto).fillna(False)
    return (keep | seg.isna()).astype(bool)


def max_segment(frame: pd.DataFrame) -> int | None:
    """The highest landing segment in ``frame`` (None when it has none)."""
    if "segment" not in frame.columns or frame.empty:
        return None
    top = pd.to_numeric(frame["segment"]).max()
    return None if pd.isna(top) else int(top)
