"""The PostgreSQL store: one database shared by every sampler replica (`--store postgresql://...`).

The SQL is `store.Store`'s; this module adds what sharing needs:
- a connection pool (psycopg 3 + psycopg_pool), connections in autocommit for plain reads;
- the database's clock for leases and liveness, so replicas' clocks never have to agree;
- `SELECT ... FOR UPDATE SKIP LOCKED` to lease prompts: two replicas leasing at once get disjoint
  prompts without waiting on each other;
- `FOR UPDATE` on the job row wherever a job's samples or status change (see `record_prompt_result`);
- adapter files in the database (bytea, in chunks), so a replica needs no shared filesystem to load
  a version another replica received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.protocol import ADAPTER_FILES
from sampler_service.store import Store

POOL_MAX_SIZE = 8
POOL_TIMEOUT_S = 30.0
ADAPTER_CHUNK_BYTES = 32 * 1024 * 1024  # bytea values stay far below PostgreSQL's 1 GB limit
SCHEMA_LOCK_KEY = 0x55D5  # advisory lock: replicas starting together create the schema one at a time

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, params TEXT NOT NULL, filters TEXT NOT NULL,
    num_prompts INTEGER NOT NULL, prompts_done INTEGER NOT NULL DEFAULT 0,
    samples_written BIGINT NOT NULL DEFAULT 0, samples_kept BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0, run_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    prompts_too_long INTEGER NOT NULL DEFAULT 0, prompts_clamped INTEGER NOT NULL DEFAULT 0,
    error TEXT, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS job_prompts (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, prompt_id TEXT NOT NULL, input TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_expires DOUBLE PRECISION,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS job_prompts_pending ON job_prompts (job_id, done, idx);
CREATE INDEX IF NOT EXISTS job_prompts_leased ON job_prompts (lease_owner) WHERE done = 0;
CREATE TABLE IF NOT EXISTS samples (
    cursor BIGSERIAL PRIMARY KEY, job_id TEXT NOT NULL, prompt_idx INTEGER NOT NULL,
    prompt_id TEXT NOT NULL, sample_index INTEGER NOT NULL, prompt TEXT NOT NULL,
    completion TEXT NOT NULL, prompt_token_ids TEXT NOT NULL, completion_token_ids TEXT NOT NULL,
    num_tokens INTEGER NOT NULL, finish_reason TEXT, kept INTEGER NOT NULL, filter_reason TEXT,
    adapter TEXT, created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (job_id, prompt_idx, sample_index)
);
CREATE INDEX IF NOT EXISTS samples_by_job ON samples (job_id, cursor);
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT NOT NULL, version INTEGER NOT NULL, lora_id INTEGER NOT NULL UNIQUE, path TEXT NOT NULL,
    rank INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL DEFAULT 'ready',
    error TEXT, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS adapter_files (
    name TEXT NOT NULL, version INTEGER NOT NULL, file TEXT NOT NULL, chunk INTEGER NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (name, version, file, chunk)
);
CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS adapter_acks (
    name TEXT NOT NULL, version INTEGER NOT NULL, replica_id TEXT NOT NULL, error TEXT,
    PRIMARY KEY (name, version, replica_id)
);
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY, info TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
);
"""

_PLACEHOLDER = re.compile(r"\?")


def _pg(sql: str) -> str:
    """The shared SQL uses `?` (SQLite's style); psycopg wants `%s`. No query holds a literal `?` or `%`."""
    return _PLACEHOLDER.sub("%s", sql)


class _Cursorish:
    """Lets the shared SQL run unchanged on a psycopg connection."""

    def __init__(self, conn: Any):
        self._conn = conn

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self._conn.execute(_pg(sql), params)

    def executemany(self, sql: str, rows: list[tuple]) -> Any:
        cursor = self._conn.cursor()
        cursor.executemany(_pg(sql), rows)
        return cursor


class PostgresStore(Store):
    NOW_SQL = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
    LOCK_SUFFIX = " FOR UPDATE"
    shared = True

    def __init__(self, url: str, *, max_size: int = POOL_MAX_SIZE):
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.url = url

        def configure(conn: Any) -> None:
            conn.autocommit = True  # a plain read must not leave a transaction open
            conn.row_factory = dict_row

        self._pool = ConnectionPool(url, min_size=1, max_size=max_size, configure=configure,
                                    timeout=POOL_TIMEOUT_S, open=False, name="ssd-store")
        self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            for statement in filter(str.strip, PG_SCHEMA.split(";")):
                db.execute(statement)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _tx(self) -> Iterator[_Cursorish]:
        with self._pool.connection() as conn, conn.transaction():
            yield _Cursorish(conn)

    def _rows(self, sql: str, params: tuple = ()) -> list[Any]:
        with self._pool.connection() as conn:
            return conn.execute(_pg(sql), params).fetchall()

    def lease_prompts(self, job_id: str, owner: str, limit: int, lease_s: float) -> list[tuple[int, str, Any]]:
        # SKIP LOCKED: rows another replica is leasing right now are passed over, not waited for.
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE job_prompts SET lease_owner = ?, lease_expires = {self.NOW_SQL} + ?"
                " WHERE job_id = ? AND idx IN (SELECT idx FROM job_prompts WHERE job_id = ? AND done = 0"
                f" AND (lease_expires IS NULL OR lease_expires < {self.NOW_SQL}) ORDER BY idx LIMIT ?"
                " FOR UPDATE SKIP LOCKED) RETURNING idx, prompt_id, input",
                (owner, lease_s, job_id, job_id, limit)).fetchall()
        return sorted((r["idx"], r["prompt_id"], json.loads(r["input"])) for r in rows)

    def _lock_adapters(self, db: Any) -> None:
        db.execute("LOCK TABLE adapters IN SHARE ROW EXCLUSIVE MODE")

    def save_adapter_files(self, name: str, version: int, folder: Path) -> None:
        with self._tx() as db:
            for file in ADAPTER_FILES:
                with (folder / file).open("rb") as handle:
                    chunk = 0
                    while data := handle.read(ADAPTER_CHUNK_BYTES):
                        db.execute("INSERT INTO adapter_files (name, version, file, chunk, data)"
                                   " VALUES (?, ?, ?, ?, ?)", (name, version, file, chunk, data))
                        chunk += 1

    def fetch_adapter_files(self, name: str, version: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with self._pool.connection() as conn:
            for file in ADAPTER_FILES:
                count = conn.execute(_pg("SELECT COUNT(*) AS n FROM adapter_files WHERE name = ? AND version = ?"
                                         " AND file = ?"), (name, version, file)).fetchone()["n"]
                if count == 0:
                    raise FileNotFoundError(f"the store holds no {file} for {name} version {version}")
                with (folder / file).open("wb") as handle:
                    for chunk in range(count):  # one chunk in memory at a time
                        row = conn.execute(_pg("SELECT data FROM adapter_files WHERE name = ? AND version = ?"
                                               " AND file = ? AND chunk = ?"), (name, version, file, chunk)).fetchone()
                        handle.write(row["data"])

    def _delete_adapter_files(self, db: Any, name: str) -> None:
        db.execute("DELETE FROM adapter_files WHERE name = ?", (name,))
