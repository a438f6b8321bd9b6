"""The journal of everything the local testbed created, so that destroy can undo it.

Each entry is appended (and fsync'ed) *before* the thing is created, so a `kill -9` at
any point leaves a journal that names everything that may exist."""
from __future__ import annotations

from pathlib import Path

from g5kdeploy import jsonlines


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)

    def record(self, kind: str, **attrs) -> None:
        self._append({"kind": kind, **attrs})

    def forget(self, kind: str, **attrs) -> None:
        """Mark an earlier entry as undone already (a released job, a restarted process)."""
        self._append({"kind": kind, "forget": True, **attrs})

    def _append(self, entry: dict) -> None:
        jsonlines.append(self.path, entry, sync=True)

    def entries(self) -> list[dict]:
        """Live entries in creation order (a torn last line from a crash is skipped)."""
        live: list[dict] = []
        for entry in jsonlines.read(self.path):
            if entry.pop("forget", False):
                live = [e for e in live if e != entry]
            elif entry not in live:
                live.append(entry)
        return live

    def exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
