"""Small helpers over the host: run a command, processes by PID, files we edit."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from g5kdeploy.errors import UserError
from g5kdeploy.files import write_atomic


def sh(*argv: str, check: bool = True, input: str | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its stderr (the command is ours, not the user's)."""
    p = subprocess.run(list(argv), capture_output=True, text=True, input=input, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the local testbed needs root (namespaces, OAR, sshd): run it as root or with sudo")


def start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Proc:
    pid: int
    uid: int
    cmdline: str


def processes() -> list[Proc]:
    """The live (non-zombie) processes of this host, but the calling one."""
    out = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pid != os.getpid() and start_time(pid) is not None:
            out.append(Proc(pid, uid, cmd.strip()))
    return out


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(k) for k in path.read_text().split()] if path.exists() else []


def kill(pid: int, started: int | None = None, term_first: bool = False, timeout: float = 10) -> None:
    """End one process we started, by PID (and start time, so a reused PID is left alone)."""
    if start_time(pid) is None or (started is not None and start_time(pid) != started):
        return
    sigs = [signal.SIGTERM, signal.SIGKILL] if term_first else [signal.SIGKILL]
    for sig in sigs:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout / len(sigs)
        while time.monotonic() < deadline:
            if start_time(pid) is None:
                return
            time.sleep(0.05)


def replace_block(path: Path, tag: str, lines: list[str] | None) -> None:
    """Put `lines` between tagged markers in a config file (None: remove the block)."""
    begin, end = f"# BEGIN {tag}", f"# END {tag}"
    text = path.read_text() if path.exists() else ""
    out, inside = [], False
    for line in text.splitlines():
        if line == begin:
            inside = True
        elif line == end:
            inside = False
        elif not inside:
            out.append(line)
    if lines:
        out += [begin, *lines, end]
    write_atomic(path, "\n".join(out) + "\n", stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
