"""QEMU guests: command line (file-backed RAM shared with the host, QMP socket, serial log,
tap on a bridge), start, and a minimal QMP client."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

VMS = Path("/var/lib/g5kdeploy/vms")        # on VMM nodes: one directory per guest (its QMP socket...)
RAM = "/dev/shm/g5kvm-{name}"               # a guest's file-backed RAM
QMP_SOCKET = "qmp.sock"                     # in the guest's directory
BOOT = Path("/var/lib/g5kdeploy/boot")      # the guest kernel and initramfs (g5kdeploy::qemu recipe)
RUNSTATE = re.compile(r"@(\d+\.\d+):vm_state_notify running (\d) reason \d+ \((\S+)\)")    # trace lines


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
    disk: Path | None            # None: a disk-less guest (its workload runs from the initramfs)
    rundir: Path
    memory_mb: int = 128
    cpus: int = 1
    ram_path: Path | None = None
    tap: str | None = None
    mac: str | None = None
    cmdline: dict[str, str] = field(default_factory=dict)
    disk_format: str = "raw"
    incoming: str | None = None          # "defer": wait for migrate-incoming
    extra: list[str] = field(default_factory=list)     # more QEMU arguments
    shares: list[str] = field(default_factory=list)    # host directories the guest may mount read-only
                                                        # (9p, tags host0, host1, ...)
    trim_kb: int = 0     # KiB off the RAM size: QEMU 7.2 under TCG loses guest writes made during a
                         # migration in RAM blocks of a multiple of 256 KiB (fixed in QEMU 9.0, 03bfc2188f)

    def __post_init__(self):
        self.rundir = Path(self.rundir)
        self.ram_path = Path(self.ram_path or RAM.format(name=self.name))

    @property
    def qmp_path(self) -> Path:
        return self.rundir / QMP_SOCKET

    @property
    def serial_path(self) -> Path:
        return self.rundir / "serial.log"

    @property
    def pid_path(self) -> Path:
        return self.rundir / "qemu.pid"

    @property
    def runstate_path(self) -> Path:
        return self.rundir / "runstate.log"

    def argv(self, accel: str | None = None) -> list[str]:
        append = " ".join(["console=ttyS0", "quiet", "panic=-1"] + [f"{k}={v}" for k, v in self.cmdline.items()])
        ram = f"{self.memory_mb * 1024 - self.trim_kb}K"
        argv = ["qemu-system-x86_64", "-name", self.name, "-accel", accel or accelerator(),
                "-m", ram, "-smp", str(self.cpus), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-object", f"memory-backend-file,id=mem,size={ram},mem-path={self.ram_path},share=on",
                "-machine", "pc,memory-backend=mem", "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", append,
                "-chardev", f"file,id=ser0,path={self.serial_path}", "-serial", "chardev:ser0",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                # every run/stop of the vCPUs, with its wall-clock time (downtime, measured alike
                # for every migration method)
                "-trace", "vm_state_notify", "-D", str(self.runstate_path), "-msg", "timestamp=on",
                "-daemonize", "-pidfile", str(self.pid_path)]
        argv += self.extra
        if self.incoming:
            argv += ["-incoming", self.incoming]
        if self.disk:
            argv += ["-drive", f"file={self.disk},format={self.disk_format},if=virtio,cache=unsafe"]
        for k, path in enumerate(self.shares):
            if "," in path:                  # it would end QEMU's option and start another
                raise ValueError(f"a shared path cannot hold a comma: {path!r}")
            argv += ["-virtfs", f"local,path={path},mount_tag=host{k},security_model=none,readonly=on,"
                                "multidevs=remap"]
        if self.tap:
            argv += ["-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev=net0,mac={self.mac}"]
        return argv

    def save(self) -> None:
        """Write the spec to rundir/spec.json (what `load` and `stop` read back)."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        spec = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items()}
        (self.rundir / "spec.json").write_text(json.dumps(spec))

    @classmethod
    def installed(cls, name: str, disk: Path | None, **options) -> "Guest":
        """A guest of a hypervisor node: the kernel and initramfs the g5kdeploy::qemu recipe
        installed, its files in VMS/<name>."""
        return cls(name, BOOT / "vmlinux", BOOT / "initrd.cpio.gz", disk, VMS / name, **options)

    @classmethod
    def load(cls, name: str, vms: Path = VMS) -> "Guest":
        spec = json.loads((vms / name / "spec.json").read_text())
        paths = {k: Path(spec[k]) if spec.get(k) else None for k in ("kernel", "initrd", "disk")}
        return cls(**{**spec, **paths})

    def plug(self, bridge: str) -> None:
        """The guest's tap, made and put on `bridge` (stop removes it)."""
        subprocess.run(["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", self.tap, "master", bridge, "up"], check=True, capture_output=True)

    def claim_ram(self) -> None:
        """Create the RAM file, this user's alone (0600): a file another user put at its path
        (in the world-writable /dev/shm) is refused, a stale one of ours replaced."""
        try:
            st = os.lstat(self.ram_path)
        except FileNotFoundError:
            pass
        else:
            if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
                raise RuntimeError(f"{self.ram_path} exists and is not this user's file: remove it")
            self.ram_path.unlink()
        os.close(os.open(self.ram_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))

    def start(self) -> int:
        """Start QEMU (daemonized) on a RAM file of its own; returns its pid."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.claim_ram()
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

    def runstates(self) -> list[tuple[float, bool, str]]:
        """(wall-clock time, running, reason) of each vCPU start and stop so far."""
        try:
            text = self.runstate_path.read_text(errors="replace")
        except OSError:
            return []
        return [(float(t), running == "1", reason) for t, running, reason in RUNSTATE.findall(text)]

    def serial(self) -> str:
        try:
            return self.serial_path.read_text(errors="replace")
        except OSError:
            return ""


def stop(name: str, vms: Path = VMS) -> bool:
    """Quit a guest's QEMU (QMP, then SIGKILL) and remove its tap, RAM file and run directory."""
    rundir = vms / name
    if not rundir.exists():
        return False
    g = Guest.load(name, vms) if (rundir / "spec.json").exists() else None
    if g and (pid := g.pid()):
        try:
            with QMP(g.qmp_path, timeout=3) as q:
                q.execute("quit")
        except (OSError, RuntimeError, ValueError):
            pass
        deadline = time.monotonic() + 5
        while g.pid() and time.monotonic() < deadline:
            time.sleep(0.05)
        if g.pid():
            os.kill(pid, signal.SIGKILL)
    if g:
        Path(g.ram_path).unlink(missing_ok=True)
        if g.tap:
            subprocess.run(["ip", "link", "del", g.tap], capture_output=True)
    shutil.rmtree(rundir, ignore_errors=True)
    return True


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

    def wait_migration(self, interval: float, timeout: float | None = None, each=None) -> dict:
        """query-migrate once the outgoing migration has ended (completed, failed, cancelled);
        `each(info)` is called on every poll before that."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (info := self.execute("query-migrate")).get("status") not in ("completed", "failed", "cancelled"):
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"migration not ended after {timeout} s: {info.get('status')}")
            if each:
                each(info)
            time.sleep(interval)
        return info

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
