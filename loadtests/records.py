"""What the load-test clients saw, one JSON line per response, one file per process.

Every locust process (the local runner, or each worker with ``--processes``) appends to
``records-<pid>.jsonl`` in the record directory; the verifier reads them all back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO

from flashflow.http.replies import Reply
from flashflow.invariants import CONFIRM, PURCHASE, STANDING, STATUS, WATCH, Record
from flashflow.invariants_line import JOIN, LINE_FINAL

__all__ = ["CONFIRM", "JOIN", "LINE_FINAL", "PURCHASE", "STANDING", "STATUS", "WATCH", "Record",
           "RecordWriter", "read_records", "record_of"]


def record_of(kind: str, user: str, started: float, elapsed_ms: float, reply: Reply,
              code: str | None, purchase_id: str | None = None, quantity: int = 1) -> Record:
    """What the verifier keeps of one reply (``purchase_id``: the hold a confirm names, else
    the purchase the reply names, else the ticket a join's reply names; ``quantity``: the
    units a purchase asked for). Of a refusal, the ``remainingStock`` it told is kept; a
    sale's is not a purchase's answer."""
    return Record(kind=kind, user=user, status=reply.status, started=started,
                  elapsed_ms=elapsed_ms,
                  purchase_id=purchase_id or reply.purchase_id or reply.ticket, code=code,
                  purchased=reply.purchased, standing=reply.standing,
                  expires_at=reply.expires_at.timestamp() if reply.expires_at else None,
                  position=reply.position, quantity=quantity,
                  remaining_stock=reply.remaining_stock if reply.error_code else None)


class RecordWriter:
    """Appends records to this process's file; opened lazily so idle processes leave none."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: IO[str] | None = None
        self._pid = 0

    def write(self, record: Record) -> None:
        """Append one record (buffered; :meth:`flush` or :meth:`close` pushes it to disk)."""
        if self._file is None or self._pid != os.getpid():
            # A forked worker must not share its parent's buffer: reopen under its own pid.
            self._directory.mkdir(parents=True, exist_ok=True)
            self._pid = os.getpid()
            path = self._directory / f"records-{self._pid}.jsonl"
            self._file = path.open("a", encoding="utf-8")  # held until close()
        self._file.write(json.dumps(asdict(record), separators=(",", ":")) + "\n")

    def flush(self) -> None:
        """Push buffered records to disk."""
        if self._file is not None and self._pid == os.getpid():
            self._file.flush()

    def close(self) -> None:
        """Flush and close this process's file."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None


def read_records(directory: Path) -> Iterator[Record]:
    """Every record written under ``directory``, file by file."""
    for path in sorted(directory.glob("records-*.jsonl")):
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # the tail of a process killed mid-write: never a whole answer
                yield Record(**json.loads(line))
