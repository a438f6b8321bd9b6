"""Append-only JSON-lines files: each entry one write(2) with O_APPEND, whole or absent."""
from __future__ import annotations

import json
import os
from pathlib import Path


def append(path: Path, entry: dict, sync: bool = False) -> None:
    """Add one line (after a line torn by a crash, on a line of its own); `sync` waits until
    it is on disk (fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if torn else "") + json.dumps(entry, default=str) + "\n").encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync(path: Path) -> None:
    """Wait until what was appended to `path` is on disk (if it exists)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
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
