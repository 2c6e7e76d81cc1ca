"""The durable store: jobs, their prompts, samples and adapter versions, in SQLite (WAL mode).

Why this survives `kill -9` with no sample lost or duplicated: a prompt's completions are inserted
and the prompt is marked done in *one* transaction. After a restart, the job runner re-submits only
prompts not marked done; a prompt that was in flight when the process died left nothing behind.

Methods are synchronous and guarded by a lock; async callers run them with `asyncio.to_thread` so
the event loop never waits on disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.protocol import (
    ACTIVE_JOB_STATUSES,
    DEFAULT_SHORTEST_BY,
    FILTER_EMPTY,
    FILTER_SHORTEST,
    JOB_QUEUED,
    SHORTEST_BY_TOKENS,
)

# SQL placeholders for `status IN (...)`, built from the contract rather than spelt out in SQL.
_ACTIVE_IN = "(" + ", ".join("?" * len(ACTIVE_JOB_STATUSES)) + ")"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, params TEXT NOT NULL, filters TEXT NOT NULL,
    num_prompts INTEGER NOT NULL, prompts_done INTEGER NOT NULL DEFAULT 0,
    samples_written INTEGER NOT NULL DEFAULT 0, samples_kept INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0, run_seconds REAL NOT NULL DEFAULT 0,
    error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_prompts (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, prompt_id TEXT NOT NULL, input TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job_id, idx)
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
    rank INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""

PENDING = "pending"  # held until the job ends, when the shortest-fraction cut is known


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


def _now() -> float:
    return time.time()


class Store:
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
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self):
        return _Transaction(self._db, self._lock)

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
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_dict(row) if row else None

    def list_jobs(self, limit: int) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [_job_dict(r) for r in rows]

    def active_job_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE status IN {_ACTIVE_IN} ORDER BY created_at", ACTIVE_JOB_STATUSES).fetchall()
        return [r["id"] for r in rows]

    def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ?",
                       (status, error, _now(), job_id))

    def pending_prompts(self, job_id: str) -> list[tuple[int, str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, prompt_id, input FROM job_prompts WHERE job_id = ? AND done = 0 ORDER BY idx",
                (job_id,)).fetchall()
        return [(r["idx"], r["prompt_id"], json.loads(r["input"])) for r in rows]

    # -- samples -----------------------------------------------------------------------------
    def record_prompt_result(self, job_id: str, result: PromptResult, filters: dict,
                             elapsed_s: float) -> int:
        """Write a prompt's completions and mark it done, atomically. Returns the kept count."""
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
            db.executemany(
                "INSERT INTO samples (job_id, prompt_idx, prompt_id, sample_index, prompt, completion,"
                " prompt_token_ids, completion_token_ids, num_tokens, finish_reason, kept, filter_reason,"
                " adapter, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("UPDATE job_prompts SET done = 1 WHERE job_id = ? AND idx = ?", (job_id, result.prompt_idx))
            db.execute(
                "UPDATE jobs SET prompts_done = prompts_done + 1, samples_written = samples_written + ?,"
                " samples_kept = samples_kept + ?, output_tokens = output_tokens + ?,"
                " run_seconds = run_seconds + ?, updated_at = ? WHERE id = ?",
                (len(rows), kept, tokens, elapsed_s, now, job_id))
        return kept

    @staticmethod
    def _filter_reason(completion: Completion, filters: dict) -> str | None:
        if filters.get("drop_empty", True) and not completion.text.strip():
            return FILTER_EMPTY
        # The shortest-fraction cut needs every length: hold the sample until the job ends.
        return PENDING if filters.get("drop_shortest_fraction", 0.0) > 0 else None

    def finish_job(self, job_id: str, status: str, error: str | None = None) -> None:
        """Move an active job to a final status (a cancel wins over a later completion) and, in the
        same transaction, settle the held samples against the job-wide shortest-fraction cut."""
        with self._tx() as db:
            row = db.execute(f"SELECT filters FROM jobs WHERE id = ? AND status IN {_ACTIVE_IN}",
                             (job_id, *ACTIVE_JOB_STATUSES)).fetchone()
            if row is None:
                return
            filters = json.loads(row["filters"])
            self._settle_pending(db, job_id, filters.get("drop_shortest_fraction", 0.0),
                                 filters.get("shortest_by", DEFAULT_SHORTEST_BY))
            db.execute("UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ? WHERE id = ?",
                       (status, error, _now(), job_id))

    @staticmethod
    def _settle_pending(db: sqlite3.Connection, job_id: str, fraction: float, shortest_by: str) -> None:
        # ml-ssd measures a response by its characters (SQL length() counts characters, not bytes).
        length = "num_tokens" if shortest_by == SHORTEST_BY_TOKENS else "length(completion)"
        lengths = [r[0] for r in db.execute(
            f"SELECT {length} FROM samples WHERE job_id = ? AND filter_reason = ? ORDER BY {length}",
            (job_id, PENDING))]
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
        with self._lock:
            rows = self._db.execute(query + " ORDER BY cursor LIMIT ?", (job_id, after, limit)).fetchall()
        return [_sample_dict(r) for r in rows]

    def has_samples_after(self, job_id: str, after: int, include_filtered: bool) -> bool:
        query = "SELECT 1 FROM samples WHERE job_id = ? AND cursor > ?"
        if not include_filtered:
            query += " AND kept = 1"
        with self._lock:
            return self._db.execute(query + " LIMIT 1", (job_id, after)).fetchone() is not None

    # -- adapters ----------------------------------------------------------------------------
    def next_adapter_version(self, name: str) -> tuple[int, int]:
        """(next version of `name`, next globally unique engine lora id)."""
        with self._lock:
            version = self._db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM adapters WHERE name = ?",
                                       (name,)).fetchone()[0]
            lora_id = self._db.execute("SELECT COALESCE(MAX(lora_id), 0) + 1 FROM adapters").fetchone()[0]
        return version, lora_id

    def add_adapter_version(self, name: str, version: int, lora_id: int, path: str, rank: int) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO adapters (name, version, lora_id, path, rank, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (name, version, lora_id, path, rank, _now()))

    def set_alias(self, name: str, version: int) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO aliases (name, version) VALUES (?, ?)"
                       " ON CONFLICT(name) DO UPDATE SET version = excluded.version", (name, version))

    def delete_adapter(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM aliases WHERE name = ?", (name,))
            db.execute("DELETE FROM adapters WHERE name = ?", (name,))

    def adapter_versions(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM adapters ORDER BY name, version").fetchall()
        return [dict(r) for r in rows]

    def aliases(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT name, version FROM aliases").fetchall()
        return {r["name"]: r["version"] for r in rows}


class _Transaction:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type, *_: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _job_dict(row: sqlite3.Row) -> dict:
    job = dict(row)
    job["params"] = json.loads(job["params"])
    job["filters"] = json.loads(job["filters"])
    job["samples_filtered"] = job["samples_written"] - job["samples_kept"]
    job["adapter"] = job["params"].get("adapter")
    run_seconds = job.pop("run_seconds")
    job["tokens_per_s"] = round(job["output_tokens"] / run_seconds, 2) if run_seconds > 0 else 0.0
    return job


def _sample_dict(row: sqlite3.Row) -> dict:
    sample = dict(row)
    sample["prompt_token_ids"] = json.loads(sample["prompt_token_ids"])
    sample["completion_token_ids"] = json.loads(sample["completion_token_ids"])
    sample["kept"] = bool(sample["kept"])
    return sample
