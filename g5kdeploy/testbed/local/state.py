"""The journal of everything the local testbed created, so that destroy can undo it.

Each entry is appended (and fsync'ed) *before* the thing is created, so a `kill -9` at
any point leaves a journal that names everything that may exist."""
from __future__ import annotations

import json
import os
from pathlib import Path


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)

    def record(self, kind: str, **attrs) -> None:
        self._append({"kind": kind, **attrs})

    def forget(self, kind: str, **attrs) -> None:
        """Mark an earlier entry as undone already (a released job, a restarted process)."""
        self._append({"kind": kind, "forget": True, **attrs})

    def _append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict]:
        """Live entries in creation order (a torn last line from a crash is skipped)."""
        if not self.path.exists():
            return []
        live: list[dict] = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.pop("forget", False):
                live = [e for e in live if e != entry]
            elif entry not in live:
                live.append(entry)
        return live

    def exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
