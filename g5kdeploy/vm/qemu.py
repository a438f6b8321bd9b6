"""QEMU guests: command line (file-backed RAM shared with the host, QMP socket, serial log,
tap on a bridge), start, and a minimal QMP client."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def accelerator() -> str:
    """KVM where it runs stock guests; TCG on a PVM host (its /dev/kvm cannot)."""
    if os.path.isdir("/sys/module/kvm_pvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    return "kvm"


def mac_for(address: str) -> str:
    """A stable locally-administered MAC from an IPv4 address."""
    a, b, c, d = (int(x) for x in address.split("."))
    return f"52:54:{a:02x}:{b:02x}:{c:02x}:{d:02x}"


@dataclass
class Guest:
    """One QEMU guest; its files live in `rundir`, its RAM in `ram_path` (a tmpfs file)."""
    name: str
    kernel: Path
    initrd: Path
    disk: Path
    rundir: Path
    memory_mb: int = 128
    cpus: int = 1
    ram_path: Path | None = None
    tap: str | None = None
    mac: str | None = None
    cmdline: dict[str, str] = field(default_factory=dict)
    disk_format: str = "raw"

    def __post_init__(self):
        self.rundir = Path(self.rundir)
        self.ram_path = Path(self.ram_path or f"/dev/shm/g5kvm-{self.name}")

    @property
    def qmp_path(self) -> Path:
        return self.rundir / "qmp.sock"

    @property
    def serial_path(self) -> Path:
        return self.rundir / "serial.log"

    @property
    def pid_path(self) -> Path:
        return self.rundir / "qemu.pid"

    def argv(self, accel: str | None = None) -> list[str]:
        append = " ".join(["console=ttyS0", "quiet", "panic=-1"] + [f"{k}={v}" for k, v in self.cmdline.items()])
        argv = ["qemu-system-x86_64", "-name", self.name, "-accel", accel or accelerator(),
                "-m", str(self.memory_mb), "-smp", str(self.cpus), "-nodefaults", "-no-user-config",
                "-display", "none", "-no-reboot",
                "-object", f"memory-backend-file,id=mem,size={self.memory_mb}M,mem-path={self.ram_path},share=on",
                "-machine", "pc,memory-backend=mem", "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", append,
                "-drive", f"file={self.disk},format={self.disk_format},if=virtio,cache=unsafe",
                "-chardev", f"file,id=ser0,path={self.serial_path}", "-serial", "chardev:ser0",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-daemonize", "-pidfile", str(self.pid_path)]
        if self.tap:
            argv += ["-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev=net0,mac={self.mac}"]
        return argv

    def start(self) -> int:
        """Start QEMU (daemonized); returns its pid."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(self.argv(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"qemu for {self.name} failed: {p.stderr.strip()[-400:]}")
        return self.pid()

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def serial(self) -> str:
        try:
            return self.serial_path.read_text(errors="replace")
        except OSError:
            return ""


class QMP:
    """A QMP connection: `QMP(path).execute("query-status")`."""

    def __init__(self, path: str | Path, timeout: float = 10):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        self._read()                                  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments):
        self.file.write(json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})}) + "\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
