"""Append-only JSON-lines files: each entry one write(2) with O_APPEND, whole or absent."""
from __future__ import annotations

import json
import os
from pathlib import Path


def append(path: Path, entry: dict, sync: bool = False) -> None:
    """Add one line; `sync` waits until it is on disk (fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, default=str) + "\n").encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path) -> list[dict]:
    """The entries of a file (a line torn by a crash is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
