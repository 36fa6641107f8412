"""``crypto-platform lake migrate``: a lake of daily Parquet files (the layout before Delta Lake) into the Delta tables.

The old layout: ``<data>/lake/<table>/date=<YYYY-MM-DD>/part.parquet``, one file per table and UTC
day, replaced whole by each run. A raw table's file (and a ``minute_bars`` file) carries in its
footer ``crypto.segments_through``: the highest landing segment the day had taken in. Every layout
the project wrote had the columns of :mod:`crypto_platform.lake.schemas`; a file that lacks one
still converts: the column is null (``raw_trades.source`` is ``'ws'``: such trades came from the
stream). A column that is not in the table, or whose values do not cast exactly (Arrow's safe cast:
no overflow, no lost digit), stops the migration naming the file and the column.

Two modes, one per run:

- default: each file's rows go into its day of the Delta table, as they are (one commit per file);
- ``--rebuild``: each raw table's day is rebuilt from the landing log by the code of a Dagster
  rebuild (:func:`~crypto_platform.lake.raw.rebuilt_day`), keeping the file's rows the landing log
  cannot give back (trades from gap repair and history). A day whose segments retention already
  removed is refused (migrate it without ``--rebuild``). ``minute_bars`` and ``daily_open_close``
  are not made from the landing log alone (REST), so they are converted as in the default mode.

Nothing is lost, and running it again changes nothing:

- every file is read and checked before anything is written: a damaged file or a column that does
  not convert stops the run with nothing written and nothing moved;
- a day the Delta table already has is not written again but verified: every row of the file
  (by the table's key, :data:`~crypto_platform.lake.schemas.ORDER`) is in it. That is what a
  second run finds, and it still holds after the lake writer has appended to the day since. A day
  that lacks some (the lake writer ran before the migration: it applied the landing log, not the
  trades from gap repair or history) has the file's rows merged in (:func:`merge_day`);
- after its commit a day is verified the same way, and a converted day must hold exactly the
  file's row count;
- only then is the file moved to the backup folder (``<data>/lake-parquet-backup/``, same layout),
  which is kept: delete it once you are satisfied. The old files must leave the lake's folders,
  where the Delta tables now live (``lake_maintenance``'s vacuum deletes files no commit names).

The segment watermark (the raw tables' Delta application transaction, see
:mod:`crypto_platform.lake.raw`) says "every segment through N is in the table". From per-day
watermarks it is the longest run of segments from the first whose every day (of the table's
channels) had taken it in; a day with no file or no recorded watermark ends the run. So the writer
re-applies each segment the migrated rows might lack (a re-applied row ties with the one in the
table, which stays) and skips none it holds only partly. The watermark is only ever raised.
``minute_bars``' per-day watermark (``segments:<day>``) goes into the day's own commit.

The run holds the lake writer's lock, so no writer starts meanwhile, and refuses to start while one
runs (``make stop`` first); each table is written under the lock the Dagster assets take.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crypto_platform.lake.decode import merge
from crypto_platform.lake.raw import LANDING_APP_ID, RAW_TABLES, _identities, rebuilt_day
from crypto_platform.lake.schemas import DATE_COLUMN, ORDER, SCHEMAS
from crypto_platform.lake.tables import DeltaLake, sort_rows, with_date
from crypto_platform.settings import Settings
from crypto_platform.stream.manifest import iter_manifest, last_manifest_entry

OLD_FILE = "part.parquet"
THROUGH = b"crypto.segments_through"
BACKUP_DIR = "lake-parquet-backup"
# Columns a file may lack and the value they get (null otherwise).
DEFAULTS: dict[str, dict[str, Any]] = {"raw_trades": {"source": "ws"}}


class MigrationError(RuntimeError):
    """The migration stopped: the message names the file or day, the cause and what to do."""


@dataclass(frozen=True)
class OldFile:
    """One day of one table in the old layout."""

    table: str
    day: str
    path: Path  # where it is now: the old lake, or the backup folder after an earlier run
    backup: Path  # where it is kept once its day is in Delta
    rows: int = 0
    through: int | None = None  # the landing-segment watermark in its footer


@dataclass
class TableSummary:
    """What the migration did to one table."""

    table: str
    days: int = 0
    rows_in: int = 0  # rows of the old files
    rows_out: int = 0  # rows the Delta table holds for those days afterwards
    written: int = 0  # days converted or rebuilt
    merged: int = 0  # days Delta already had, lacking rows of the file: merged
    verified: int = 0  # days already in Delta with every row of the file
    watermark: tuple[int | None, int | None] | None = None  # (before, after) for a raw table

    def line(self, dry_run: bool = False) -> str:
        text = f"{self.table}: {self.days} days, {self.rows_in} rows in"
        if not dry_run:
            done = f"{self.written} written, {self.merged} merged into Delta's, {self.verified} already in Delta"
            text = f"{self.table}: {self.days} days ({done}), {self.rows_in} rows in, {self.rows_out} rows out"
        if self.watermark is not None:
            before, after = (("none" if v is None else str(v)) for v in self.watermark)
            text += f", landing watermark {before} -> {after}"
        return text


@dataclass
class Plan:
    files: list[OldFile] = field(default_factory=list)
    present: dict[str, set[str]] = field(default_factory=dict)  # table -> days Delta already has


def find_old_files(source: Path, backup: Path) -> list[OldFile]:
    """The old layout's files under ``source`` and ``backup`` (a day in both is refused: which one is right?)."""
    found: dict[tuple[str, str], OldFile] = {}
    for folder in (source, backup):
        for table in SCHEMAS:
            for path in sorted((folder / table).glob(f"{DATE_COLUMN}=*/{OLD_FILE}")):
                day = path.parent.name.removeprefix(f"{DATE_COLUMN}=")
                try:
                    date.fromisoformat(day)
                except ValueError:
                    raise MigrationError(f"{path}: {path.parent.name} is not a day folder (date=YYYY-MM-DD)") from None
                if (table, day) in found:
                    raise MigrationError(
                        f"{table} {day} is both in {found[table, day].path} and in {path}: keep the one to migrate "
                        "(move the other away) and run again"
                    )
                found[table, day] = OldFile(table, day, path, backup / table / f"{DATE_COLUMN}={day}" / OLD_FILE)
    return sorted(found.values(), key=lambda f: (list(SCHEMAS).index(f.table), f.day))


def conform(table: str, rows: pa.Table, path: Path) -> pa.Table:
    """``rows`` of ``path`` with the table's current schema; refuses what cannot be converted exactly."""
    schema = SCHEMAS[table]
    extra = [c for c in rows.column_names if c not in schema.names and c != DATE_COLUMN]
    if extra:
        raise MigrationError(
            f"{path}: column {extra[0]!r} is not a column of lake table {table}; nothing was migrated "
            "(migrating the file would drop it): remove the column from the file, or keep the file out of the lake"
        )
    columns = []
    for f in schema:
        if f.name not in rows.column_names:
            default = DEFAULTS.get(table, {}).get(f.name)
            columns.append(
                pa.nulls(rows.num_rows, f.type) if default is None else pa.array([default] * rows.num_rows, f.type)
            )
            continue
        column = rows[f.name]
        try:
            columns.append(column.cast(f.type))  # safe: an overflow or a lost digit raises
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise MigrationError(
                f"{path}: column {f.name!r} is {column.type} and cannot be converted to {f.type} ({exc}); "
                "nothing was migrated: fix or remove the file (rebuild a raw table's day with --rebuild)"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def read_old(old: OldFile) -> tuple[pa.Table, int | None]:
    """The file's rows in the table's schema and its watermark; a damaged file raises naming it."""
    try:
        parquet = pq.ParquetFile(old.path)  # the file alone: no partition column from its folder
        rows = parquet.read()
    except (OSError, pa.ArrowException) as exc:
        raise MigrationError(
            f"{old.path}: not a readable Parquet file ({exc}); nothing was migrated: restore it from a copy, or "
            "move it away and rebuild the day (--rebuild, for a raw table)"
        ) from None
    through = (rows.schema.metadata or {}).get(THROUGH)
    return conform(old.table, rows, old.path), int(through) if through is not None else None


def lacking(table: str, rows: pa.Table, held: pa.Table | None) -> pa.Table:
    """The rows of ``rows`` whose key (:data:`ORDER`) no row of ``held`` has."""
    key = list(ORDER[table])
    if held is None or held.num_rows == 0:
        return rows
    ids = _identities(rows, key).append_column("__row", pa.array(range(rows.num_rows), pa.int64()))
    absent = ids.join(_identities(held, key), key, join_type="left anti")["__row"]
    return rows.take(absent)


def missing_keys(lake: DeltaLake, table: str, day: str, rows: pa.Table) -> int:
    """How many of ``rows`` have no row with their key in the table's ``day``."""
    return lacking(table, rows, lake.read(table, day, columns=list(ORDER[table]), ordered=False)).num_rows


def merge_day(lake: DeltaLake, table: str, day: str, rows: pa.Table) -> None:
    """Merge the file's ``rows`` into the ``day`` Delta already has (written before the migration).

    A raw day by the raw tables' rule (natural key, earliest receipt; a tie keeps the row already
    in Delta; bar revisions renumbered), as a rebuild with the file's rows kept would; another
    table keeps Delta's row of a key (written later) and gains the file's other rows. One commit.
    """
    held = lake.read(table, day)
    if table in RAW_TABLES:
        spec = RAW_TABLES[table]
        decoded = rows.append_column("idx", pa.array(np.zeros(rows.num_rows, np.int64)))
        day_rows, _ = merge(decoded, held, spec.schema, spec.key, spec.order, spec.finish, fast=False)
    else:
        day_rows = sort_rows(table, pa.concat_tables([t for t in (held, lacking(table, rows, held)) if t is not None]))
    lake.replace(table, day, day_rows)


def landing_watermark(root: Path, channels: frozenset[str], through: Mapping[str, int | None]) -> int | None:
    """The highest segment N such that every segment through N is in the table, given each day's watermark.

    A segment is in when every day it holds events of (on ``channels``) has a watermark at or past
    it; a day without one (no file, none recorded) holds none. None: not even the first segment.
    """
    mark = None
    for entry in iter_manifest(root):
        seq = int(entry["seq"])
        days = [d for d, chans in (entry.get("days") or {}).items() if channels & set(chans)]
        if any((through.get(d) or 0) < seq for d in days):
            break
        mark = seq
    return mark


def _kept(table: str, rows: pa.Table) -> pa.Table | None:
    """The rows of a raw day the landing log cannot give back (gap repair, history)."""
    keep = RAW_TABLES[table].kept_on_rebuild
    if keep is None:
        return None
    column, values = keep
    return rows.filter(pc.is_in(rows[column], value_set=pa.array(values, pa.string())))


def _move(old: OldFile) -> None:
    if old.path == old.backup:
        return
    old.backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(old.path, old.backup)  # a rename on one filesystem


def _write_day(
    lake: DeltaLake, settings: Settings, old: OldFile, rows: pa.Table, rebuild: bool, upto: int | None
) -> pa.Table:
    """Write one absent day to Delta (convert, or rebuild from the landing log); the rows committed."""
    if rebuild and old.table in RAW_TABLES and upto is not None:
        spec = RAW_TABLES[old.table]
        day_rows, _, _, _, missing = rebuilt_day(
            lake, spec, settings.landing_dir, old.day, upto, _kept(old.table, rows)
        )
        if missing:
            raise MigrationError(
                f"{old.table} {old.day}: the landing log no longer has segments {missing[:5]} (removed by retention), "
                f"so a rebuild would lose rows of {old.path}; migrate without --rebuild"
            )
        lost = lacking(old.table, rows, day_rows).num_rows
        if lost:
            raise MigrationError(
                f"{old.table} {old.day}: a rebuild from the landing log lacks {lost} rows of {old.path} "
                "(nothing written for the day); migrate without --rebuild"
            )
        lake.replace(old.table, old.day, day_rows)
        return day_rows
    marks = None
    if old.table == "minute_bars" and old.through is not None:
        from crypto_platform.assets.bars import bars_app_id

        marks = {bars_app_id(old.day): old.through}
    lake.append(old.table, with_date(sort_rows(old.table, rows), old.day), marks)
    return rows


def plan(settings: Settings, source: Path, backup: Path) -> Plan:
    """Every old file, read and checked (rows, watermark), and the days Delta already has."""
    from crypto_platform.lake.writer import lake_of

    lake = lake_of(settings)
    out = Plan(present={t: set(lake.days(t)) for t in SCHEMAS})
    for old in find_old_files(source, backup):
        rows, through = read_old(old)
        out.files.append(OldFile(old.table, old.day, old.path, old.backup, rows.num_rows, through))
    return out


def migrate(
    settings: Settings,
    rebuild: bool = False,
    dry_run: bool = False,
    source: Path | None = None,
    backup: Path | None = None,
    out: Callable[[str], None] = print,
) -> list[TableSummary]:
    """Migrate the old lake under ``source`` (default ``<data>/lake``); see the module docstring."""
    from crypto_platform.lake.writer import lake_of, table_lock, writer_lock

    source = source or settings.data_dir / "lake"
    backup = backup or settings.data_dir / BACKUP_DIR
    lake = lake_of(settings)
    guard: AbstractContextManager[object] = nullcontext() if dry_run else writer_lock(settings)
    with guard:
        work = plan(settings, source, backup)
        if not work.files:
            out(f"no old Parquet files ({source}/<table>/date=<day>/{OLD_FILE}): nothing to migrate")
            return []
        upto = None
        if rebuild:
            newest = last_manifest_entry(settings.landing_dir)
            if newest is None:
                raise MigrationError(f"--rebuild needs the landing log, and {settings.landing_dir} has none")
            upto = int(newest["seq"])
        summaries = []
        for table in SCHEMAS:
            files = [f for f in work.files if f.table == table]
            lock = nullcontext() if dry_run else table_lock(settings, table)
            with lock:
                summary = _migrate_table(lake, settings, table, files, work.present[table], rebuild, upto, dry_run, out)
            if summary is not None:
                summaries.append(summary)
                out(summary.line(dry_run))
        if dry_run:
            out("dry run: nothing written, nothing moved")
        else:
            out(
                f"done: every row of the {len(work.files)} old files is in the Delta tables at {settings.lake_url}; "
                f"the old files are kept in {backup} (delete them once you are satisfied)"
            )
        return summaries


def _migrate_table(
    lake: DeltaLake,
    settings: Settings,
    table: str,
    files: list[OldFile],
    present: set[str],
    rebuild: bool,
    upto: int | None,
    dry_run: bool,
    out: Callable[[str], None],
) -> TableSummary | None:
    summary = TableSummary(table, days=len(files), rows_in=sum(f.rows for f in files))
    through: dict[str, int | None] = {}
    rebuilds = rebuild and table in RAW_TABLES
    for old in files:
        # A rebuilt day holds every segment through ``upto``; a converted or verified one what its file said.
        through[old.day] = upto if rebuilds and old.day not in present else old.through
        if dry_run:
            action = "verify (already in Delta)" if old.day in present else ("rebuild" if rebuilds else "convert")
            out(f"  {table} {old.day}: {action}, {old.rows} rows, watermark {old.through}: {old.path} -> {old.backup}")
            continue
        rows, _ = read_old(old)
        if old.day not in present:
            written = _write_day(lake, settings, old, rows, rebuild, upto)
            summary.written += 1
            if lake.count(table, old.day) != written.num_rows:
                raise MigrationError(
                    f"{table} {old.day}: Delta holds {lake.count(table, old.day)} rows after writing the "
                    f"{written.num_rows} of {old.path}; the file stays where it is"
                )
        elif missing_keys(lake, table, old.day, rows):
            merge_day(lake, table, old.day, rows)  # a day the writer or a run wrote before the migration
            summary.merged += 1
        else:
            summary.verified += 1
        lost = missing_keys(lake, table, old.day, rows)
        if lost:
            raise MigrationError(
                f"{table} {old.day}: the Delta table lacks {lost} of the {rows.num_rows} rows of {old.path} after "
                "the migration wrote the day; the file stays where it is"
            )
        summary.rows_out += lake.count(table, old.day)
        _move(old)
    if table in RAW_TABLES:
        before = lake.watermark(table, LANDING_APP_ID)
        mark = landing_watermark(settings.landing_dir, RAW_TABLES[table].channels, through)
        after = before
        if mark is not None and (before is None or mark > before):
            after = mark
            if not dry_run:
                empty = with_date(SCHEMAS[table].empty_table(), "")
                lake.append(table, empty, {LANDING_APP_ID: mark})
        summary.watermark = (before, after)
    if not files and (summary.watermark is None or summary.watermark[0] == summary.watermark[1]):
        return None  # nothing of it in the old lake, nothing changed
    return summary


def add_arguments(name: str, parser: Any) -> None:
    sub = parser.add_subparsers(dest="lake_command", required=True)
    cmd = sub.add_parser(
        "migrate",
        help="turn an old lake of daily Parquet files into the Delta tables",
        description=(
            "Turn a lake of daily Parquet files (<data>/lake/<table>/date=<day>/part.parquet, the layout before "
            "Delta Lake) into the Delta tables; the old files are kept in the backup folder. Stop the lake writer "
            "first (make stop)."
        ),
    )
    cmd.add_argument("--rebuild", action="store_true", help="rebuild the raw tables' days from the landing log")
    cmd.add_argument("--dry-run", action="store_true", help="list what would be done; write and move nothing")
    cmd.add_argument("--from", dest="source", type=Path, default=None, help="the old lake (default <data>/lake)")
    cmd.add_argument(
        "--backup", type=Path, default=None, help=f"where the old files are kept (default <data>/{BACKUP_DIR})"
    )


def run(args: Any) -> int:
    """``crypto-platform lake migrate``."""
    from crypto_platform.lake.writer import WriterAlreadyRunning, running_pid
    from crypto_platform.settings import load_settings

    settings = load_settings()
    try:
        migrate(settings, args.rebuild, args.dry_run, args.source, args.backup)
    except WriterAlreadyRunning:
        pid = running_pid(settings)
        print(
            f"crypto-platform lake migrate: the lake writer is running (pid {pid}) for {settings.data_dir}: "
            "stop it first with `make stop` (crypto-platform services stop), then run the migration again",
            file=sys.stderr,
        )
        return 3
    except MigrationError as exc:
        print(f"crypto-platform lake migrate: {exc}", file=sys.stderr)
        return 1
    return 0
