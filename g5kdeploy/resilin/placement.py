"""Where an instance's engine runs, and how Resilin reaches it there.

  * `vmm`: on the VMM host of the instance (EC2's Placement.HostId), with the instance's
    core, reached with the testbed's root ssh, run as the unprivileged user `resilin` (the
    job flow's programs and bootstrap actions included); the instance boots `tiny` and holds
    the core. The default under TCG, where a JVM runs ~8x slower in a guest than on its host
    (benchmarks/resilin.py measures both placements side by side).
  * `instance`: inside the instances, as the thesis did (the default with KVM, i.e. on
    Grid'5000): they boot `debian-spark` (OpenJDK, pyspark) with a key pair of Resilin's own
    and are reached as root over ssh; the g5kdeploy sources are copied in once.

Both take files (secrets included: sent as a tar on ssh's stdin or copied by scp, never on
a command line) and one script per call."""
from __future__ import annotations

import io
import secrets
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from g5kdeploy import NODE_SOURCE, chef, remote
from g5kdeploy.resilin import spark
from g5kdeploy.vm import qemu

PLACEMENTS = ("vmm", "instance")
SSH_TIMEOUT_S = 180                   # a running instance whose sshd does not answer by then has failed


def default() -> str:
    return "vmm" if qemu.accelerator() == "tcg" else "instance"


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class OnVmm:
    name, image, user = "vmm", "tiny", spark.USER          # the users' code never runs as root there
    emulated = False                                       # its JVMs run on the host's own CPU

    def key_name(self, site: str) -> str | None:
        return None

    def prepare(self, instance) -> None:
        """Nothing to do: the VMM hosts have Spark (the nimbus-vmm role) and the sources."""

    def address(self, instance) -> str:
        return socket.gethostbyname(instance.host)

    def where(self, instance) -> str:
        return instance.host

    def run(self, instance, script: str, files: dict[str, bytes] | None = None, into: str = "") -> tuple[bool, str]:
        """`script` on the instance's VMM (its stderr's end if it fails), `files` put in `into` first."""
        if files:
            name = f"resilin-{secrets.token_hex(6)}.tar"
            with tempfile.TemporaryDirectory(prefix="resilin-") as tmp:
                (Path(tmp) / name).write_bytes(_tar(files))
                (Path(tmp) / name).chmod(0o600)
                sent = remote.put([Path(tmp) / name], [instance.host], ".")[0]
            if not sent.ok:
                return False, f"cannot copy files to {instance.host}: {sent.error or sent.stderr.strip()[-200:]}"
            script = f"install -d -m 700 {into} && tar -xf {name} -C {into} && rm -f {name}\n{script}"
        r = remote.run(script, [instance.host])[0]
        return r.ok, r.stderr.strip() or r.error or f"exit {r.exit_code}"


class InGuest:
    name, image, user = "instance", "debian-spark", None   # the instance is the user's own

    def __init__(self, clouds):
        self.clouds = clouds
        self.emulated = qemu.accelerator() == "tcg"

    def key_name(self, site: str) -> str:
        return self.clouds.key_pair(site)[0]

    def _ssh(self, instance, command: str, stdin: bytes, timeout: float | None = None) -> subprocess.CompletedProcess:
        key = self.clouds.key_pair(instance.cloud)[1]
        return subprocess.run(remote.login(key, instance.address, command), input=stdin, capture_output=True,
                              timeout=timeout)

    def prepare(self, instance) -> None:
        """Wait for the instance's sshd, then copy the g5kdeploy sources in."""
        deadline = time.monotonic() + SSH_TIMEOUT_S
        while (r := self._ssh(instance, f"mkdir -p {NODE_SOURCE} && tar -xzf - -C {NODE_SOURCE}", chef.sources(),
                              timeout=60)).returncode == 255:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{instance.ec2_id} ({instance.address}): no ssh after {SSH_TIMEOUT_S} s: "
                                   f"{r.stderr.decode(errors='replace').strip()[-200:]}")
            time.sleep(1)
        if r.returncode != 0:
            raise RuntimeError(f"{instance.ec2_id}: the sources did not unpack: {r.stderr.decode(errors='replace')[-200:]}")

    def address(self, instance) -> str:
        return instance.address

    def where(self, instance) -> str:
        return instance.address

    def run(self, instance, script: str, files: dict[str, bytes] | None = None, into: str = "") -> tuple[bool, str]:
        if files:
            r = self._ssh(instance, f"install -d -m 700 {into} && tar -xf - -C {into}", _tar(files), timeout=120)
            if r.returncode != 0:
                return False, f"cannot copy files to {instance.address}: {r.stderr.decode(errors='replace')[-200:]}"
        r = self._ssh(instance, "sh -s", script.encode())
        return r.returncode == 0, r.stderr.decode(errors="replace").strip() or f"exit {r.returncode}"


def of(name: str, clouds):
    if name not in PLACEMENTS:
        raise ValueError(f"unknown placement {name!r}: use one of {', '.join(PLACEMENTS)}")
    return OnVmm() if name == "vmm" else InGuest(clouds)
