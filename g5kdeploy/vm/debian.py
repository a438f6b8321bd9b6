"""Debian guest disks built with mmdebstrap from the machine's own apt sources (nothing
downloaded but Debian packages), cached by content: the base image `debian` (systemd,
OpenSSH, python3, the contextualization agent as a unit) and role images that add packages
(`debian-blast`: BLAST+ and Dask for sky computing; `debian-spark`: OpenJDK and the
frontend's pyspark, for Resilin's engine inside the instances). They boot on the same kernel and
initramfs as the `tiny` busybox guest (vm.image); TCG here, KVM on Grid'5000.

In the guest: root logs in with the key pair named in RunInstances only (no password);
sshd's host key is made at first boot (no two guests share one); the serial getty is masked
(no udev: it would wait 90 s for ttyS0)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from g5kdeploy import jvm, work_dir
from g5kdeploy.vm.image import CACHE, GUEST, ImageError, sh

SUITE = "bookworm"
BASE = ("systemd-sysv", "openssh-server", "python3", "busybox", "iproute2")
ROLES = {"debian": (), "debian-blast": ("ncbi-blast+", "python3-distributed"),
         "debian-spark": ("openjdk-17-jre-headless", "python3-boto3")}
TREES = {"debian-spark": ("/opt/g5kdeploy/spark",)}      # the frontend's copies a role carries (bootstrap.sh: pyspark)
EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
FORMAT = 1                                     # bump when the layout below changes

AGENT_UNIT = """[Unit]
Description=g5kdeploy contextualization agent (network, peers, key pair, user data)
After=local-fs.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/g5k-agent
[Install]
WantedBy=multi-user.target
"""
SSH_DROPIN = """[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -f /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
"""
SSHD_CONFIG = """HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""


def packages(role: str) -> tuple[str, ...]:
    if role not in ROLES:
        raise ImageError(f"unknown guest image {role!r}: use one of tiny, {', '.join(ROLES)}")
    return BASE + ROLES[role]


def _candidates(names: tuple[str, ...]) -> list[str]:
    """name=version of each package as apt would install it (what the cache is keyed on)."""
    out = sh("apt-cache", "policy", *names)
    versions, current = [], None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.rstrip(":")
        elif line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version == "(none)":
                raise ImageError(f"package {current} is not known to apt: run apt-get update")
            versions.append(f"{current}={version}")
    return versions


def trees(role: str) -> list[str]:
    """What of the role's trees the frontend holds: their top-level names (the versions), and
    the size and time of their top-level files (remade in place, as Spark's CDS archive)."""
    out = []
    for tree in TREES.get(role, ()):
        if not Path(tree).is_dir():
            raise ImageError(f"image {role} carries {tree}, which this machine lacks: run ./bootstrap.sh")
        out += [f"{tree}/{p.name}" + (f"@{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.is_file() else "")
                for p in sorted(Path(tree).iterdir())]
    return out


def fingerprint(role: str) -> str:
    h = hashlib.sha256(json.dumps([FORMAT, SUITE, _candidates(packages(role)), EXCLUDED, AGENT_UNIT, SSH_DROPIN,
                                   SSHD_CONFIG, trees(role)]).encode())
    h.update(GUEST.joinpath("agent").read_bytes())
    return h.hexdigest()[:16]


def _customize(root: Path) -> None:
    """The agent as a unit, sshd for key logins with a host key of each guest's own, no getty."""
    units = root / "etc/systemd/system"
    (root / "usr/local/sbin/g5k-agent").write_bytes(GUEST.joinpath("agent").read_bytes())
    (root / "usr/local/sbin/g5k-agent").chmod(0o755)
    (units / "g5k-agent.service").write_text(AGENT_UNIT)
    (units / "multi-user.target.wants").mkdir(exist_ok=True)
    (units / "multi-user.target.wants/g5k-agent.service").symlink_to("/etc/systemd/system/g5k-agent.service")
    (units / "ssh.service.d").mkdir(exist_ok=True)
    (units / "ssh.service.d/g5k-hostkey.conf").write_text(SSH_DROPIN)
    (root / "etc/ssh/sshd_config.d/g5k.conf").write_text(SSHD_CONFIG)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for unit in ("serial-getty@ttyS0.service", "getty@tty1.service", "systemd-timesyncd.service",
                 "apt-daily.timer", "apt-daily-upgrade.timer"):
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")
    (root / "etc/hostname").write_text("guest\n")
    (root / "etc/machine-id").write_text("")            # made at first boot: one per guest
    (root / "www").mkdir(exist_ok=True)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def _in_root(root: Path, *cmd: str) -> None:
    """`cmd` chrooted in an image's root, with /proc mounted in a mount namespace that dies
    with it (a JVM needs /proc); all its output is the error's."""
    sh("unshare", "--mount", "--fork", "sh", "-c", 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@" >&2',
       str(root), *cmd)


def build(role: str = "debian", cache: Path = CACHE) -> Path:
    """The raw ext4 disk of a Debian guest image (built once per content, then reused)."""
    cache = Path(cache)
    if cache == CACHE:
        work_dir()
    if not shutil.which("mmdebstrap"):
        raise ImageError("mmdebstrap is not installed: run ./bootstrap.sh (or apt-get install mmdebstrap)")
    out = cache / "images" / f"{role}-{fingerprint(role)}"
    if (out / "disk.img").exists():
        return out / "disk.img"
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-debian-", dir=cache) as tmp:
        root = Path(tmp) / "root"
        cmd = ["mmdebstrap", "--quiet", "--variant=apt", "--include=" + ",".join(packages(role)),
               '--setup-hook=mkdir -p "$1/usr/share/man/man1"',      # update-alternatives (OpenJDK's) links there
               *(f"--dpkgopt=path-exclude={p}" for p in EXCLUDED), SUITE, str(root)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise ImageError(f"mmdebstrap for {role} failed: {p.stderr.strip()[-300:]}")
        _customize(root)
        for tree in TREES.get(role, ()):
            shutil.copytree(tree, root / tree.lstrip("/"), symlinks=True)
            for name in jvm.lists(tree):                 # its CDS archives, dumped by the guest's own JVM
                _in_root(root, *jvm.dump_command(name))
        used = int(sh("du", "-sm", "--apparent-size", str(root)).split()[0])
        size = int(used * 1.25) + 128                    # room to work in, as a fresh VM has
        work = Path(tmp) / "out"
        work.mkdir()
        sh("mke2fs", "-q", "-F", "-t", "ext4", "-L", "g5kguest", "-d", str(root), str(work / "disk.img"), f"{size}M")
        (work / "manifest.json").write_text(json.dumps({"role": role, "packages": _candidates(packages(role)),
                                                        "size_mb": size}))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(str(work), out)
    return out / "disk.img"
