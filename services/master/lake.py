"""The DuckLake that holds `exo_inferences`: open it, add records (each id once), answer read-only queries.

Blocking DuckDB calls; the master runs them in a thread (services/master/inference_log.py). The lake is open
only for one batch or one query at a time: DuckLake's catalog here is a DuckDB file, which one process may
hold for writing and no other process may open meanwhile. Opening it per use (~tens of ms) lets a plain
`duckdb` shell, or a second master on this disk, attach it between two batches; a batch that finds it held
waits in the stream and is written later, never lost.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import msgspec

from shared.inference_log import InferenceRecord, InferenceRows

TABLE = "exo_inferences"
CATALOG_FILE = "catalog.ducklake"
DATA_DIR = "data"
MAX_REPLY_BYTES = 512 * 1024  # a query's rows travel in one bus message (NATS max payload is 1 MiB)

# (column, type) in the table's order; `timestamp` holds when the request ended
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("api", "VARCHAR"),
    ("model", "VARCHAR"),
    ("instance", "VARCHAR"),
    ("status", "INTEGER"),
    ("finish_reason", "VARCHAR"),
    ("error", "VARCHAR"),
    ("prompt_tokens", "INTEGER"),
    ("cached_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("latency_ms", "DOUBLE"),
    ("time_to_first_token_ms", "DOUBLE"),
    ("decode_tokens_per_s", "DOUBLE"),
    ("devices", "INTEGER"),
    ("strategy", "VARCHAR"),
    ("seed", "UBIGINT"),
    ("trit", "TINYINT"),
    ("stream", "BOOLEAN"),
)

# statements a read-only query may be; everything else (INSERT, COPY, ATTACH, SET, CALL...) is refused
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


class LakeBusy(Exception):
    """Another process holds the lake (a duckdb shell, say): try again later."""


def extension_path() -> Path:
    """The signed DuckLake extension inside the `duckdb-extension-ducklake` wheel (a plain LOAD would download)."""
    spec = importlib.util.find_spec("duckdb_extension_ducklake")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("duckdb-extension-ducklake is not installed (pip install duckdb-extension-ducklake)")
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "extensions" / f"v{duckdb.__version__}" / "ducklake.duckdb_extension"
    if not path.exists():
        found = sorted(p.parent.name for p in package.glob("extensions/*/ducklake.duckdb_extension"))
        raise RuntimeError(f"no DuckLake extension for duckdb {duckdb.__version__} (the package has {found}): "
                           "install duckdb and duckdb-extension-ducklake of the same version")  # fmt: skip
    return path


def attach_sql(lake_dir: Path, read_only: bool) -> str:
    """The ATTACH statement (also what the README shows for a plain duckdb shell)."""
    options = f"DATA_PATH '{_quoted(lake_dir / DATA_DIR)}/'" + (", READ_ONLY" if read_only else "")
    return f"ATTACH 'ducklake:{_quoted(lake_dir / CATALOG_FILE)}' AS lake ({options})"


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


class Lake:
    """One DuckDB instance (loading the extension takes a second here: once) that attaches the lake for each
    batch or query and detaches it after. Not thread-safe: the caller runs one call at a time."""

    def __init__(self, lake_dir: Path) -> None:
        self.dir = lake_dir
        self._con: duckdb.DuckDBPyConnection | None = None

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            con = duckdb.connect(":memory:")
            con.execute(f"LOAD '{_quoted(extension_path())}'")
            self._con = con
        return self._con

    @contextmanager
    def attached(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        """The lake attached as `lake` and in use; a writable attach creates the lake and the table."""
        if read_only and not (self.dir / CATALOG_FILE).exists():
            raise FileNotFoundError(f"no inference log at {self.dir} yet (no request has been recorded)")
        self.dir.mkdir(parents=True, exist_ok=True)
        con = self._connection()
        try:
            con.execute(attach_sql(self.dir, read_only))
        except duckdb.Error as exc:
            _rollback(con)
            if "lock" in str(exc).lower():
                raise LakeBusy(f"the inference log is held by another process: {exc}") from None
            raise
        try:
            con.execute("USE lake")
            if not read_only:
                columns = ", ".join(f'"{name}" {type_}' for name, type_ in COLUMNS)
                con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})")
            yield con
        finally:
            _rollback(con)
            con.execute("USE memory")
            con.execute("DETACH lake")

    def write(self, records: list[InferenceRecord]) -> int:
        """Add the records whose id is new; returns how many were."""
        with self.attached(read_only=False) as con:
            return insert_new(con, records)

    def flush(self) -> None:
        """Move the rows DuckLake keeps inline in its catalog (small inserts: every batch here) into Parquet data
        files under DATA_DIR, so the catalog stays small and the data files hold the table."""
        with self.attached(read_only=False) as con:
            con.execute("CALL ducklake_flush_inlined_data('lake')")

    def query(self, sql: str, max_rows: int) -> InferenceRows:
        """One read-only query on a read-only attach; errors come back in the reply, not as exceptions."""
        if problem := read_only_problem(sql):
            return InferenceRows(error=problem)
        try:
            with self.attached(read_only=True) as con:
                cursor = con.execute(sql)
                columns = tuple(d[0] for d in cursor.description or ())
                rows = cursor.fetchmany(max_rows + 1)
        except (FileNotFoundError, LakeBusy) as exc:
            return InferenceRows(error=str(exc))
        except duckdb.Error as exc:
            return InferenceRows(error=f"{type(exc).__name__}: {exc}")
        return fit_reply(columns, [tuple(_plain(v) for v in row) for row in rows], max_rows)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """End a transaction an error left open (DuckDB refuses every statement in an aborted one)."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # none was open


def record_row(record: InferenceRecord) -> tuple:
    """One record as a row of the table, in COLUMNS' order (the timestamp as UTC)."""
    values = msgspec.structs.asdict(record)
    values["timestamp"] = dt.datetime.fromtimestamp(record.timestamp, dt.UTC).replace(tzinfo=None)
    return tuple(values[name] for name, _ in COLUMNS)


def unique_by_id(records: Iterable[InferenceRecord]) -> list[InferenceRecord]:
    """The first record of each id (a batch may hold one record twice: a redelivery)."""
    seen: dict[str, InferenceRecord] = {}
    for record in records:
        seen.setdefault(record.id, record)
    return list(seen.values())


def insert_new(con: duckdb.DuckDBPyConnection, records: list[InferenceRecord]) -> int:
    """Add the records whose id the table does not hold yet, in one transaction; returns how many were new."""
    batch = unique_by_id(records)
    if not batch:
        return 0
    names = ", ".join(f'"{name}"' for name, _ in COLUMNS)
    con.execute("BEGIN")
    try:
        con.execute(f"CREATE TEMP TABLE batch AS SELECT * FROM {TABLE} LIMIT 0")
        con.executemany(f"INSERT INTO batch VALUES ({', '.join('?' for _ in COLUMNS)})", [record_row(r) for r in batch])
        new_rows = f"SELECT {names} FROM batch WHERE id NOT IN (SELECT id FROM {TABLE})"
        (count,) = con.execute(f"SELECT count(*) FROM ({new_rows})").fetchone() or (0,)
        if count:
            con.execute(f"INSERT INTO {TABLE} ({names}) {new_rows}")
        con.execute("DROP TABLE batch")
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise
    return count


def read_only_problem(sql: str) -> str | None:
    """Why `sql` may not run as a read-only query, or None. Parsed by DuckDB itself."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        return f"cannot parse the query: {exc}"
    if not statements:
        return "empty query"
    if len(statements) > 1:
        return "one statement at a time"
    kind = statements[0].type.name
    if kind not in READ_ONLY_STATEMENTS:
        return f"only read-only queries (SELECT) are allowed; this is a {kind} statement"
    return None


def fit_reply(columns: tuple[str, ...], rows: list[tuple], max_rows: int) -> InferenceRows:
    """At most max_rows rows, and no more than fit in one bus message; `truncated` says when rows were left out."""
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    while rows and len(msgspec.json.encode(rows)) > MAX_REPLY_BYTES:
        rows = rows[: len(rows) // 2]
        truncated = True
    return InferenceRows(columns=columns, rows=tuple(rows), truncated=truncated)


def _plain(value: object) -> object:
    """JSON-friendly: times as ISO text, decimals as floats; everything else as DuckDB gives it."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if type(value).__name__ == "Decimal":
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
