"""ssh and scp from the service node to its VMM nodes, with the cloud's own key; one
connection per VMM is kept open and shared (a new one costs ~0.2 s of handshake here)."""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
           "-o", "UserKnownHostsFile=/var/lib/nimbus/known_hosts", "-o", "ConnectTimeout=15",
           "-o", "ControlMaster=auto", "-o", "ControlPath=/var/lib/nimbus/ssh-%C", "-o", "ControlPersist=600"]


class RemoteError(RuntimeError):
    pass


def ssh_command(key: str) -> list[str]:
    return ["ssh", "-i", key, *OPTIONS]


def run(key: str, host: str, command: str, timeout: float = 300) -> str:
    p = subprocess.run(ssh_command(key) + [f"root@{host}", command], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RemoteError(f"{host}: {command.split()[0]}...: {(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


def scp(key: str, source: str, host: str, dest: str, timeout: float = 1800) -> None:
    p = subprocess.run(["scp", "-q", "-i", key, *OPTIONS, source, f"root@{host}:{dest}"],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RemoteError(f"scp to {host}: {p.stderr.strip()[-300:]}")


def each(fn, items) -> list:
    """fn(item) for every item in parallel; the first error is raised after all ended."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(min(16, len(items))) as pool:
        futures = [pool.submit(fn, i) for i in items]
    return [f.result() for f in futures]
