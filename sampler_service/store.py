"""The durable store: jobs, their prompts, samples, replicas and adapter versions.

`Store` is the interface and holds the SQL both engines share; `SQLiteStore` (here, the embedded
default, WAL mode) and `PostgresStore` (`store_pg.py`, shared by several replicas) differ only in
connections, schema types, the clock and row locking. `open_store` picks one from the config.

Why this survives `kill -9` with no sample lost or duplicated:
- a prompt's completions are inserted and the prompt is marked done in *one* transaction, and that
  transaction writes nothing when the prompt is already done (idempotent: a replica whose lease ran
  out and another that took the prompt over may both finish it; the first write wins). Samples also
  carry a unique key (job, prompt index, sample index); prompt ids are unique within a job.
- a prompt is worked on under a lease (`lease_prompts`): an owner and an expiry on the database's
  clock, pushed forward by the owner's heartbeat. A dead replica stops beating, its leases expire,
  and any replica leases the prompt again.
- the transaction that marks the last prompt done also finishes the job (settling the samples held
  for `drop_shortest_fraction`), so exactly one writer completes it.

Methods are synchronous; async callers run them with `asyncio.to_thread` so the event loop never
waits on the database.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.protocol import (
    ACTIVE_JOB_STATUSES,
    DEFAULT_SHORTEST_BY,
    FILTER_EMPTY,
    FILTER_SHORTEST,
    JOB_COMPLETED,
    JOB_QUEUED,
    JOB_RUNNING,
    SHORTEST_BY_TOKENS,
)

PENDING = "pending"  # held until the job ends, when the shortest-fraction cut is known

# Adapter version states: uploading (its files are being stored; no replica looks at it yet),
# staged (every replica loads it and acks), ready (the alias may point at it), failed (some
# replica could not load it, or not in time; never served).
ADAPTER_UPLOADING, ADAPTER_STAGED, ADAPTER_READY, ADAPTER_FAILED = "uploading", "staged", "ready", "failed"

# `status IN (...)` placeholders, built from the contract rather than spelt out in SQL.
_ACTIVE_IN = "(" + ", ".join("?" * len(ACTIVE_JOB_STATUSES)) + ")"


@dataclass
class Completion:
    """One generated completion, as the engine layer hands it to the store."""

    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class PromptResult:
    prompt_idx: int
    prompt_id: str
    prompt_text: str
    prompt_token_ids: list[int]
    completions: list[Completion]
    adapter: str | None
    # The context decided, not the request: the prompt left no room at all (too_long), or less
    # room than the job's max_tokens (clamped). Counted on the job, so nothing is cut silently.
    too_long: bool = False
    clamped: bool = False


def _now() -> float:
    return time.time()


def default_replica_id(port: int) -> str:
    """host:port plus a random tail: a restarted replica never inherits the leases of its past self."""
    return f"{socket.gethostname()}:{port}/{uuid.uuid4().hex[:6]}"


class Store:
    """The store interface, with the SQL that SQLite and PostgreSQL share (`?` placeholders).

    Subclasses provide `_tx()` (a transaction yielding an object with `execute`/`executemany`),
    `_rows()` (a read outside a transaction), `NOW_SQL` (the database clock in epoch seconds),
    `LOCK_SUFFIX` (row locking for `SELECT`), `lease_prompts` and the adapter file storage."""

    NOW_SQL = ""
    LOCK_SUFFIX = ""
    shared = False  # True where several replicas use the store at once

    # -- subclass hooks ----------------------------------------------------------------------
    def _tx(self) -> Any:
        raise NotImplementedError

    def _rows(self, sql: str, params: tuple = ()) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def lease_prompts(self, job_id: str, owner: str, limit: int, lease_s: float) -> list[tuple[int, str, Any]]:
        """Take up to `limit` prompts that are not done and not under a live lease, in index order."""
        raise NotImplementedError

    def save_adapter_files(self, name: str, version: int, folder: Path) -> None:
        """Make the files readable by every replica (no-op where the store is not shared)."""

    def fetch_adapter_files(self, name: str, version: int, folder: Path) -> None:
        """Write the version's files into `folder` (no-op where they already are local)."""

    def _one(self, sql: str, params: tuple = ()) -> Any:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, name: str | None, params: dict, filters: dict,
                   prompts: list[tuple[str, Any]]) -> str:
        job_id = "job_" + uuid.uuid4().hex[:16]
        now = _now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, name, status, params, filters, num_prompts, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, name, JOB_QUEUED, json.dumps(params), json.dumps(filters), len(prompts), now, now))
            db.executemany(
                "INSERT INTO job_prompts (job_id, idx, prompt_id, input) VALUES (?, ?, ?, ?)",
                [(job_id, idx, pid, json.dumps(value)) for idx, (pid, value) in enumerate(prompts)])
        return job_id

    def get_job(self, job_id: str) -> dict | None:
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_dict(row) if row else None

    def list_jobs(self, limit: int) -> list[dict]:
        return [_job_dict(r) for r in self._rows("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))]

    def active_job_ids(self) -> list[str]:
        rows = self._rows(f"SELECT id FROM jobs WHERE status IN {_ACTIVE_IN} ORDER BY created_at",
                          ACTIVE_JOB_STATUSES)
        return [r["id"] for r in rows]

    def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ?",
                       (status, error, _now(), job_id))

    def mark_running(self, job_id: str) -> None:
        """queued -> running; a job another replica already finished or cancelled stays as it is."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
                       (JOB_RUNNING, _now(), job_id, JOB_QUEUED))

    def pending_prompts(self, job_id: str) -> list[tuple[int, str, Any]]:
        rows = self._rows("SELECT idx, prompt_id, input FROM job_prompts WHERE job_id = ? AND done = 0 ORDER BY idx",
                          (job_id,))
        return [(r["idx"], r["prompt_id"], json.loads(r["input"])) for r in rows]

    def unfinished_prompts(self, job_id: str) -> int:
        return self._one("SELECT COUNT(*) AS n FROM job_prompts WHERE job_id = ? AND done = 0", (job_id,))["n"]

    # -- leases and replicas -----------------------------------------------------------------
    def heartbeat(self, replica_id: str, lease_s: float, info: dict | None = None) -> None:
        """Say this replica is alive, and push its open leases `lease_s` into the future."""
        with self._tx() as db:
            db.execute(
                f"INSERT INTO replicas (id, info, started_at, seen_at) VALUES (?, ?, {self.NOW_SQL}, {self.NOW_SQL})"
                " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at", (replica_id, json.dumps(info or {})))
            db.execute(f"UPDATE job_prompts SET lease_expires = {self.NOW_SQL} + ?"
                       " WHERE lease_owner = ? AND done = 0", (lease_s, replica_id))

    def release_leases(self, replica_id: str) -> None:
        """Hand this replica's prompts back at once (a clean stop), rather than after the expiry."""
        with self._tx() as db:
            db.execute("UPDATE job_prompts SET lease_owner = NULL, lease_expires = NULL"
                       " WHERE lease_owner = ? AND done = 0", (replica_id,))

    def remove_replica(self, replica_id: str) -> None:
        self.release_leases(replica_id)
        with self._tx() as db:
            db.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))

    def live_replicas(self, lease_s: float) -> list[str]:
        rows = self._rows(f"SELECT id FROM replicas WHERE seen_at > {self.NOW_SQL} - ? ORDER BY id", (lease_s,))
        return [r["id"] for r in rows]

    def lease_owners(self, job_id: str) -> dict[int, str | None]:
        rows = self._rows("SELECT idx, lease_owner FROM job_prompts WHERE job_id = ? ORDER BY idx", (job_id,))
        return {r["idx"]: r["lease_owner"] for r in rows}

    # -- samples -----------------------------------------------------------------------------
    def record_prompt_result(self, job_id: str, result: PromptResult, filters: dict, elapsed_s: float) -> int | None:
        """Write a prompt's completions, mark it done and, for the last prompt, complete the job:
        atomically. Returns the kept count, or None when nothing was written (the prompt was
        already done, or the job is no longer active)."""
        now = _now()
        rows, kept, tokens = [], 0, 0
        for index, completion in enumerate(result.completions):
            reason = self._filter_reason(completion, filters)
            kept += reason is None
            tokens += len(completion.token_ids)
            rows.append((job_id, result.prompt_idx, result.prompt_id, index, result.prompt_text,
                         completion.text, json.dumps(result.prompt_token_ids), json.dumps(completion.token_ids),
                         len(completion.token_ids), completion.finish_reason, int(reason is None), reason,
                         result.adapter, now))
        with self._tx() as db:
            # The job row first, locked: writers of one job take turns, so cursors (the samples'
            # sequence numbers) commit in increasing order and a reader never skips one.
            job = db.execute(f"SELECT num_prompts, prompts_done, filters FROM jobs WHERE id = ? AND status IN"
                             f" {_ACTIVE_IN}{self.LOCK_SUFFIX}", (job_id, *ACTIVE_JOB_STATUSES)).fetchone()
            if job is None:
                return None
            marked = db.execute("UPDATE job_prompts SET done = 1, lease_owner = NULL, lease_expires = NULL"
                                " WHERE job_id = ? AND idx = ? AND done = 0", (job_id, result.prompt_idx)).rowcount
            if marked == 0:
                return None  # another replica finished this prompt first
            db.executemany(
                "INSERT INTO samples (job_id, prompt_idx, prompt_id, sample_index, prompt, completion,"
                " prompt_token_ids, completion_token_ids, num_tokens, finish_reason, kept, filter_reason,"
                " adapter, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, prompt_idx, sample_index) DO NOTHING", rows)
            db.execute(
                "UPDATE jobs SET prompts_done = prompts_done + 1, samples_written = samples_written + ?,"
                " samples_kept = samples_kept + ?, output_tokens = output_tokens + ?,"
                " run_seconds = run_seconds + ?, prompts_too_long = prompts_too_long + ?,"
                " prompts_clamped = prompts_clamped + ?, updated_at = ? WHERE id = ?",
                (len(rows), kept, tokens, elapsed_s, int(result.too_long), int(result.clamped), now, job_id))
            if job["prompts_done"] + 1 >= job["num_prompts"]:
                self._finish(db, job_id, json.loads(job["filters"]), JOB_COMPLETED, None)
        return kept

    @staticmethod
    def _filter_reason(completion: Completion, filters: dict) -> str | None:
        if filters.get("drop_empty", True) and not completion.text.strip():
            return FILTER_EMPTY
        # The shortest-fraction cut needs every length: hold the sample until the job ends.
        return PENDING if filters.get("drop_shortest_fraction", 0.0) > 0 else None

    def finish_job(self, job_id: str, status: str, error: str | None = None) -> bool:
        """Move an active job to a final status (a cancel wins over a later completion) and, in the
        same transaction, settle the held samples. True when this call did it, False when the job
        was already final (another replica, or an earlier call, finished it)."""
        with self._tx() as db:
            row = db.execute(f"SELECT filters FROM jobs WHERE id = ? AND status IN {_ACTIVE_IN}{self.LOCK_SUFFIX}",
                             (job_id, *ACTIVE_JOB_STATUSES)).fetchone()
            if row is None:
                return False
            self._finish(db, job_id, json.loads(row["filters"]), status, error)
            return True

    def _finish(self, db: Any, job_id: str, filters: dict, status: str, error: str | None) -> None:
        self._settle_pending(db, job_id, filters.get("drop_shortest_fraction", 0.0),
                             filters.get("shortest_by", DEFAULT_SHORTEST_BY))
        db.execute("UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ?",
                   (status, error, _now(), job_id))

    @staticmethod
    def _settle_pending(db: Any, job_id: str, fraction: float, shortest_by: str) -> None:
        # ml-ssd measures a response by its characters (SQL length() counts characters, not bytes,
        # in SQLite and PostgreSQL alike).
        length = "num_tokens" if shortest_by == SHORTEST_BY_TOKENS else "length(completion)"
        lengths = [r["n"] for r in db.execute(
            f"SELECT {length} AS n FROM samples WHERE job_id = ? AND filter_reason = ? ORDER BY {length}",
            (job_id, PENDING)).fetchall()]
        if not lengths:
            return
        # ml-ssd: drop the shortest `fraction` of the non-empty responses. Ties at the cut are kept.
        threshold = lengths[min(int(fraction * len(lengths)), len(lengths) - 1)]
        db.execute("UPDATE samples SET kept = 0, filter_reason = ?"
                   f" WHERE job_id = ? AND filter_reason = ? AND {length} < ?",
                   (FILTER_SHORTEST, job_id, PENDING, threshold))
        kept = db.execute("UPDATE samples SET kept = 1, filter_reason = NULL WHERE job_id = ? AND filter_reason = ?",
                          (job_id, PENDING)).rowcount
        db.execute("UPDATE jobs SET samples_kept = samples_kept + ? WHERE id = ?", (kept, job_id))

    def samples_page(self, job_id: str, after: int, limit: int, include_filtered: bool) -> list[dict]:
        query = "SELECT * FROM samples WHERE job_id = ? AND cursor > ?"
        if not include_filtered:
            query += " AND kept = 1"
        return [_sample_dict(r) for r in self._rows(query + " ORDER BY cursor LIMIT ?", (job_id, after, limit))]

    def has_samples_after(self, job_id: str, after: int, include_filtered: bool) -> bool:
        query = "SELECT 1 AS one FROM samples WHERE job_id = ? AND cursor > ?"
        if not include_filtered:
            query += " AND kept = 1"
        return self._one(query + " LIMIT 1", (job_id, after)) is not None

    # -- adapters ----------------------------------------------------------------------------
    def create_adapter_version(self, name: str, rank: int, path: str) -> tuple[int, int]:
        """Register the next version of `name`, as uploading. Returns (version, engine lora id); the
        lora id is unique across every adapter, so no engine ever reuses one for other weights."""
        with self._tx() as db:
            self._lock_adapters(db)
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM adapters WHERE name = ?",
                                 (name,)).fetchone()["v"]
            lora_id = db.execute("SELECT COALESCE(MAX(lora_id), 0) + 1 AS v FROM adapters").fetchone()["v"]
            db.execute("INSERT INTO adapters (name, version, lora_id, path, rank, state, created_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)", (name, version, lora_id, path, rank, ADAPTER_UPLOADING, _now()))
        return version, lora_id

    def _lock_adapters(self, db: Any) -> None:
        """Serialise version allocation (SQLite's write lock already does)."""

    def set_adapter_state(self, name: str, version: int, state: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE adapters SET state = ?, error = ? WHERE name = ? AND version = ?",
                       (state, error, name, version))

    def ack_adapter(self, name: str, version: int, replica_id: str, error: str | None) -> None:
        """Record that `replica_id` loaded (error None) or failed to load the version."""
        with self._tx() as db:
            db.execute("INSERT INTO adapter_acks (name, version, replica_id, error) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (name, version, replica_id) DO UPDATE SET error = excluded.error",
                       (name, version, replica_id, error))

    def adapter_acks(self, name: str, version: int) -> dict[str, str | None]:
        rows = self._rows("SELECT replica_id, error FROM adapter_acks WHERE name = ? AND version = ?", (name, version))
        return {r["replica_id"]: r["error"] for r in rows}

    def move_alias(self, name: str, version: int) -> None:
        """Mark the version ready and point the alias at it, in one transaction. The alias only
        moves forward: of two uploads racing on two replicas, the newer version wins."""
        with self._tx() as db:
            db.execute("UPDATE adapters SET state = ? WHERE name = ? AND version = ?", (ADAPTER_READY, name, version))
            db.execute("INSERT INTO aliases (name, version) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                       " SET version = excluded.version WHERE aliases.version < excluded.version", (name, version))

    def alias_of(self, name: str) -> int | None:
        row = self._one("SELECT version FROM aliases WHERE name = ?", (name,))
        return row["version"] if row else None

    def delete_adapter(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM aliases WHERE name = ?", (name,))
            db.execute("DELETE FROM adapter_acks WHERE name = ?", (name,))
            self._delete_adapter_files(db, name)
            db.execute("DELETE FROM adapters WHERE name = ?", (name,))

    def _delete_adapter_files(self, db: Any, name: str) -> None:
        """Drop the stored files (no-op where they are local)."""

    def adapter_versions(self) -> list[dict]:
        rows = self._rows("SELECT name, version, lora_id, path, rank, state, error, created_at FROM adapters"
                          " ORDER BY name, version")
        return [dict(r) for r in rows]

    def aliases(self) -> dict[str, int]:
        return {r["name"]: r["version"] for r in self._rows("SELECT name, version FROM aliases")}


# -- SQLite ----------------------------------------------------------------------------------

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, params TEXT NOT NULL, filters TEXT NOT NULL,
    num_prompts INTEGER NOT NULL, prompts_done INTEGER NOT NULL DEFAULT 0,
    samples_written INTEGER NOT NULL DEFAULT 0, samples_kept INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, run_seconds REAL NOT NULL DEFAULT 0,
    prompts_too_long INTEGER NOT NULL DEFAULT 0, prompts_clamped INTEGER NOT NULL DEFAULT 0,
    error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_prompts (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, prompt_id TEXT NOT NULL, input TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_expires REAL, PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS job_prompts_pending ON job_prompts (job_id, done, idx);
CREATE TABLE IF NOT EXISTS samples (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, prompt_idx INTEGER NOT NULL,
    prompt_id TEXT NOT NULL, sample_index INTEGER NOT NULL, prompt TEXT NOT NULL,
    completion TEXT NOT NULL, prompt_token_ids TEXT NOT NULL, completion_token_ids TEXT NOT NULL,
    num_tokens INTEGER NOT NULL, finish_reason TEXT, kept INTEGER NOT NULL, filter_reason TEXT,
    adapter TEXT, created_at REAL NOT NULL,
    UNIQUE (job_id, prompt_idx, sample_index)
);
CREATE INDEX IF NOT EXISTS samples_by_job ON samples (job_id, cursor);
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT NOT NULL, version INTEGER NOT NULL, lora_id INTEGER NOT NULL UNIQUE, path TEXT NOT NULL,
    rank INTEGER NOT NULL, created_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'ready', error TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS adapter_acks (
    name TEXT NOT NULL, version INTEGER NOT NULL, replica_id TEXT NOT NULL, error TEXT,
    PRIMARY KEY (name, version, replica_id)
);
CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, info TEXT NOT NULL, started_at REAL NOT NULL,
                                     seen_at REAL NOT NULL);
"""

# Columns added since the first schema: a store written by an older version gains them on open.
SQLITE_MIGRATIONS = {
    "jobs": {"prompts_too_long": "INTEGER NOT NULL DEFAULT 0", "prompts_clamped": "INTEGER NOT NULL DEFAULT 0"},
    "job_prompts": {"lease_owner": "TEXT", "lease_expires": "REAL"},
    "adapters": {"state": "TEXT NOT NULL DEFAULT 'ready'", "error": "TEXT"},
}


class SQLiteStore(Store):
    """One process, one file. Leases still apply (the job runner is the same code for both
    stores), but no other replica can exist, so opening the file hands back every old lease."""

    # Unix time on SQLite's clock, with milliseconds.
    NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode is durable against a process crash (kill -9); only power loss can
        # drop the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SQLITE_SCHEMA)
        self._migrate()
        with self._tx() as db:
            db.execute("UPDATE job_prompts SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner IS NOT NULL")

    def _migrate(self) -> None:
        for table, columns in SQLITE_MIGRATIONS.items():
            have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for column, decl in columns.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        # After the columns exist: the heartbeat finds a replica's leases through this index.
        self._db.execute("CREATE INDEX IF NOT EXISTS job_prompts_leased ON job_prompts (lease_owner) WHERE done = 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: tuple = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def lease_prompts(self, job_id: str, owner: str, limit: int, lease_s: float) -> list[tuple[int, str, Any]]:
        # BEGIN IMMEDIATE holds the file's write lock, which is all the exclusion one file needs.
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE job_prompts SET lease_owner = ?, lease_expires = {self.NOW_SQL} + ?"
                f" WHERE job_id = ? AND idx IN (SELECT idx FROM job_prompts WHERE job_id = ? AND done = 0"
                f" AND (lease_expires IS NULL OR lease_expires < {self.NOW_SQL}) ORDER BY idx LIMIT ?)"
                " RETURNING idx, prompt_id, input", (owner, lease_s, job_id, job_id, limit)).fetchall()
        return sorted((r["idx"], r["prompt_id"], json.loads(r["input"])) for r in rows)


def open_store(spec: str, data_dir: Path) -> Store:
    """`spec` empty: SQLite in `data_dir`; a postgresql:// URL: PostgreSQL; else a SQLite file path."""
    if spec.startswith(("postgresql://", "postgres://")):
        from sampler_service.store_pg import PostgresStore

        return PostgresStore(spec)
    return SQLiteStore(Path(spec) if spec else data_dir / "store.sqlite3")


def _job_dict(row: Any) -> dict:
    job = dict(row)
    job["params"] = json.loads(job["params"])
    job["filters"] = json.loads(job["filters"])
    job["samples_filtered"] = job["samples_written"] - job["samples_kept"]
    job["adapter"] = job["params"].get("adapter")
    run_seconds = job.pop("run_seconds")
    job["tokens_per_s"] = round(job["output_tokens"] / run_seconds, 2) if run_seconds > 0 else 0.0
    return job


def _sample_dict(row: Any) -> dict:
    sample = dict(row)
    sample["prompt_token_ids"] = json.loads(sample["prompt_token_ids"])
    sample["completion_token_ids"] = json.loads(sample["completion_token_ids"])
    sample["kept"] = bool(sample["kept"])
    return sample
