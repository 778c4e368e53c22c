"""The pipeline's state: its passes and their steps, in SQLite beside the pipeline's run dir.

`<run_dir>/<name>/state.db` holds one row per pass (window, status running|done, outcome,
decision, lineage) and one row per finished step of a pass (its outputs as JSON). A step is
recorded in one transaction after its outputs are written, so after a crash a pass resumes at
the first step without a row: the steps before it are not redone, that one is redone whole.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from raydl.errors import RaydlError

SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (
  id INTEGER PRIMARY KEY AUTOINCREMENT, window TEXT NOT NULL, path TEXT NOT NULL,
  status TEXT NOT NULL, outcome TEXT, forced INTEGER NOT NULL DEFAULT 0, rows INTEGER,
  started_at REAL NOT NULL, finished_at REAL, decision TEXT, lineage TEXT, resumed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS steps (
  pass_id INTEGER NOT NULL REFERENCES passes(id), step TEXT NOT NULL, started_at REAL NOT NULL,
  finished_at REAL NOT NULL, output TEXT NOT NULL, PRIMARY KEY (pass_id, step));
"""


class StateError(RaydlError):
    """The pipeline's state database cannot be used (corrupt, locked, not a pipeline's)."""


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    for k in ("decision", "lineage", "output"):
        if d.get(k):
            d[k] = json.loads(d[k])
    return d


class State:
    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / "state.db"
        try:
            self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StateError(f"pipeline state {self.path}: {e}; move it away to start the pipeline afresh") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _one(self, sql: str, *args) -> dict | None:
        r = self.db.execute(sql, args).fetchone()
        return _row(r) if r is not None else None

    # ---- passes --------------------------------------------------------------------------------

    def unfinished(self) -> dict | None:
        return self._one("SELECT * FROM passes WHERE status = 'running' ORDER BY id LIMIT 1")

    def done_windows(self) -> dict[str, dict]:
        return {r["window"]: _row(r) for r in self.db.execute("SELECT * FROM passes WHERE status = 'done' ORDER BY id")}

    def start(self, window: str, path: str, forced: bool, rows: int) -> int:
        cur = self.db.execute("INSERT INTO passes (window, path, status, forced, rows, started_at) VALUES (?, ?, 'running', ?, ?, ?)",
                              (window, path, int(forced), rows, time.time()))
        return int(cur.lastrowid)

    def mark_resumed(self, pass_id: int) -> None:
        self.db.execute("UPDATE passes SET resumed = resumed + 1 WHERE id = ?", (pass_id,))

    def finish(self, pass_id: int, outcome: str, decision: dict, lineage: dict) -> None:
        self.db.execute("UPDATE passes SET status = 'done', outcome = ?, finished_at = ?, decision = ?, lineage = ? "
                        "WHERE id = ?", (outcome, time.time(), json.dumps(decision), json.dumps(lineage), pass_id))

    def get(self, pass_id: int) -> dict:
        return self._one("SELECT * FROM passes WHERE id = ?", pass_id)

    def passes(self, limit: int | None = None) -> list[dict]:
        sql = "SELECT * FROM passes ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [_row(r) for r in self.db.execute(sql)][::-1]

    def rows_since_retrain(self) -> int:
        """Labelled rows of the windows done since the last pass that retrained."""
        last = self.db.execute("SELECT MAX(id) FROM passes WHERE status = 'done' AND outcome IN ('promoted', 'rejected')"
                               ).fetchone()[0]
        return int(self.db.execute("SELECT COALESCE(SUM(rows), 0) FROM passes WHERE status = 'done' AND id > ?",
                                   (last or 0,)).fetchone()[0])

    def earlier(self, pass_id: int, part: str = "holdout") -> list[str]:
        """The `part` files (holdout: the old data; train) of the windows done before this pass."""
        rows = self.db.execute("SELECT s.output FROM steps s JOIN passes p ON p.id = s.pass_id WHERE s.step = 'window' "
                               "AND p.status = 'done' AND p.outcome != 'failed' AND p.id < ? ORDER BY p.id", (pass_id,))
        return [json.loads(r[0])[part] for r in rows]

    # ---- steps ---------------------------------------------------------------------------------

    def step(self, pass_id: int, step: str) -> dict | None:
        r = self._one("SELECT * FROM steps WHERE pass_id = ? AND step = ?", pass_id, step)
        return r["output"] if r else None

    def steps(self, pass_id: int) -> list[dict]:
        return [_row(r) for r in self.db.execute("SELECT * FROM steps WHERE pass_id = ? ORDER BY finished_at", (pass_id,))]

    def record(self, pass_id: int, step: str, started: float, output: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO steps (pass_id, step, started_at, finished_at, output) VALUES (?, ?, ?, ?, ?)",
                        (pass_id, step, started, time.time(), json.dumps(output)))
