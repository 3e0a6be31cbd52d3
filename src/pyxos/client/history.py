"""Writing client histories to disk, for the linearizability checker.

Theory of operation
-------------------
``AsyncClient(history=...)`` hands every get/put/delete/cas to a callable as a dict in
the history format of docs/architecture.md ("Histories"). :class:`HistoryFile` is such a
callable: it appends each record as one JSON line and flushes, so a history survives a
crash of the recording process up to its last completed line. Several clients may
share one ``HistoryFile`` (on one thread or event loop: it takes no lock).
"""

from __future__ import annotations

import json
import os
from types import TracebackType
from typing import Any, TextIO

__all__ = ["HistoryFile"]


class HistoryFile:
    """Append history records to ``path`` as JSON lines (use as ``history=``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.records = 0
        """Records written so far."""
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, record: dict[str, Any]) -> None:
        """Write one record as a JSON line."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.records += 1

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> HistoryFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
