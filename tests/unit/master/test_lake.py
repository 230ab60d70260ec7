"""The inference log's DuckLake (a real DuckDB with the DuckLake extension, in a temp dir): each id one row,
read-only queries only, and a clear answer when the lake is missing or held by another process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from services.master.inference_log import FLUSH_EVERY_S, FLUSH_ROWS, decode_records, should_flush
from services.master.lake import (
    CATALOG_FILE,
    COLUMNS,
    Lake,
    attach_sql,
    extension_path,
    fit_reply,
    read_only_problem,
    record_row,
    unique_by_id,
)
from shared.inference_log import InferenceRecord


def record(rid: str, latency_ms: float = 100.0, model: str = "smollm2-135m", **kw) -> InferenceRecord:
    fields = dict(
        id=rid, timestamp=1_790_000_000.5, api="chat.completions", model=model, instance="inst-1", status=200,
        finish_reason="stop", error=None, prompt_tokens=12, cached_tokens=4, completion_tokens=20,
        latency_ms=latency_ms, time_to_first_token_ms=30.0, decode_tokens_per_s=25.0, devices=2,
        strategy="pipeline", seed=2**64 - 1,
    )  # fmt: skip
    fields.update(kw)
    return InferenceRecord(**fields)


@pytest.fixture
def lake(tmp_path: Path):  # noqa: ANN201
    lake = Lake(tmp_path / "inferences")
    yield lake
    lake.close()


def test_the_extension_ships_with_the_pinned_package() -> None:
    assert extension_path().name == "ducklake.duckdb_extension"
    assert f"v{duckdb.__version__}" in str(extension_path())


def test_a_record_becomes_one_row_with_every_column(lake: Lake) -> None:
    assert lake.write([record("chatcmpl-1")]) == 1
    rows = lake.query("SELECT * FROM exo_inferences", 10)
    assert rows.error is None
    assert rows.columns == tuple(name for name, _ in COLUMNS)
    row = dict(zip(rows.columns, rows.rows[0]))
    assert row["id"] == "chatcmpl-1"
    assert row["timestamp"] == "2026-09-21T14:13:20.500000"  # UTC
    assert row["seed"] == 2**64 - 1  # an unsigned 64-bit seed fits
    assert row["trit"] == 0
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (12, 4, 20)


def test_a_redelivered_record_is_no_second_row(lake: Lake) -> None:
    assert lake.write([record("a"), record("b"), record("a")]) == 2  # twice in one batch
    assert lake.write([record("b"), record("c")]) == 1  # again in a later batch
    assert lake.write([record("a"), record("b"), record("c")]) == 0
    rows = lake.query("SELECT id, count(*) FROM exo_inferences GROUP BY id ORDER BY id", 10)
    assert rows.rows == (("a", 1), ("b", 1), ("c", 1))


def test_the_seed_query_averages_latency_by_model(lake: Lake) -> None:
    lake.write([record("1", 100.0), record("2", 300.0), record("3", 50.0, model="llama-3.3-70b")])
    rows = lake.query("SELECT model, AVG(latency_ms) FROM exo_inferences GROUP BY model ORDER BY model", 10)
    assert rows.rows == (("llama-3.3-70b", 50.0), ("smollm2-135m", 200.0))


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("SELECT 1", None),
        ("select * from exo_inferences where model = 'x'", None),
        ("WITH t AS (SELECT 1) SELECT * FROM t", None),
        ("DELETE FROM exo_inferences", "DELETE statement"),
        ("INSERT INTO exo_inferences SELECT * FROM exo_inferences", "INSERT statement"),
        ("COPY exo_inferences TO '/tmp/x.csv'", "COPY statement"),
        ("ATTACH 'other.db'", "ATTACH statement"),
        ("DROP TABLE exo_inferences", "DROP statement"),
        ("SELECT 1; DELETE FROM exo_inferences", "one statement at a time"),
        ("", "empty query"),
        ("SELEKT 1", "cannot parse"),
    ],
)
def test_only_read_only_queries_run(sql: str, problem: str | None) -> None:
    found = read_only_problem(sql)
    assert (found is None) if problem is None else (problem in found)


def test_a_write_is_refused_and_changes_nothing(lake: Lake) -> None:
    lake.write([record("a")])
    refused = lake.query("DELETE FROM exo_inferences", 10)
    assert "only read-only queries" in refused.error
    assert lake.query("SELECT count(*) FROM exo_inferences", 10).rows == ((1,),)


def test_a_query_error_comes_back_as_text(lake: Lake) -> None:
    lake.write([])
    rows = lake.query("SELECT nope FROM exo_inferences", 10)
    assert rows.error is not None and "nope" in rows.error
    assert lake.write([record("after-an-error")]) == 1  # the connection is still usable


def test_no_lake_yet_says_so(lake: Lake) -> None:
    assert "no inference log" in lake.query("SELECT 1", 10).error


def test_a_lake_held_by_another_process_is_busy_and_loses_nothing(lake: Lake) -> None:
    lake.write([record("a")])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(60)", str(lake.dir / CATALOG_FILE)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="held by another process"):
            lake.write([record("b")])
        assert "held by another process" in lake.query("SELECT 1", 10).error
    finally:
        holder.kill()
        holder.wait()
    assert lake.write([record("b")]) == 1  # the batch that waited is written once the lake is free
    assert lake.query("SELECT count(*) FROM exo_inferences", 10).rows == ((2,),)


def test_a_plain_duckdb_attaches_the_lake_read_only(lake: Lake) -> None:
    """What the README shows: the extension file, then ATTACH ... READ_ONLY, from a separate connection."""
    lake.write([record("a"), record("b")])
    lake.close()  # the master detaches between batches; closing is the same for the file lock
    con = duckdb.connect()
    con.execute(f"LOAD '{extension_path()}'")
    con.execute(attach_sql(lake.dir, read_only=True))
    assert con.execute("SELECT count(*) FROM lake.exo_inferences").fetchone() == (2,)
    con.close()


def test_replies_fit_one_bus_message() -> None:
    rows = [("x" * 1000,)] * 2000
    reply = fit_reply(("c",), rows, 10_000)
    assert reply.truncated and 0 < len(reply.rows) < 2000
    assert fit_reply(("c",), [(1,), (2,), (3,)], 2) == fit_reply(("c",), [(1,), (2,)], 2).__class__(
        columns=("c",), rows=((1,), (2,)), truncated=True
    )


def test_rows_follow_the_columns_and_ids_are_unique_per_batch() -> None:
    row = record_row(record("r", latency_ms=7.0))
    assert len(row) == len(COLUMNS)
    assert row[[name for name, _ in COLUMNS].index("latency_ms")] == 7.0
    assert [r.latency_ms for r in unique_by_id([record("r", 1.0), record("s"), record("r", 2.0)])] == [1.0, 100.0]


def test_unreadable_records_are_reported_not_written() -> None:
    import msgspec

    good = msgspec.json.encode(record("ok"))
    records, problems = decode_records([good, b"not json", b'{"id": 3}'])
    assert [r.id for r in records] == ["ok"]
    assert len(problems) == 2


def test_inline_rows_move_into_a_data_file(lake: Lake) -> None:
    """DuckLake keeps small inserts inline in its catalog; a flush writes them as Parquet under data/."""
    lake.write([record("a"), record("b")])
    assert not list(lake.dir.rglob("*.parquet"))
    lake.flush()
    assert len(list((lake.dir / "data").rglob("*.parquet"))) == 1
    assert lake.query("SELECT count(*) FROM exo_inferences", 10).rows == ((2,),)
    assert lake.write([record("a"), record("c")]) == 1  # ids in data files are seen too


def test_flush_when_enough_rows_or_old_enough() -> None:
    assert not should_flush(0, 10_000.0)
    assert not should_flush(FLUSH_ROWS - 1, FLUSH_EVERY_S - 1)
    assert should_flush(FLUSH_ROWS, 0.0)
    assert should_flush(1, FLUSH_EVERY_S + 1)
