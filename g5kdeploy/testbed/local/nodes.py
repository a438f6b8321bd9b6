"""Testbed nodes: keys, the private layer of each node, its sshd, start/stop, ssh access."""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

from g5kdeploy.files import write_atomic
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.local.oar_server import USER
from g5kdeploy.testbed.local.system import kill, sh, start_time
from g5kdeploy.testbed.model import DOMAINS, Node

PREFIX = "g5k-"
SSH_CONFIG = Path("/etc/ssh/ssh_config.d/g5kdeploy.conf")
HOSTS = Path("/etc/hosts")
HOSTS_TAG = "g5kdeploy testbed"

SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey /etc/ssh/g5kdeploy_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 500:30:1000
MaxSessions 500
X11Forwarding no
PrintMotd no
PrintLastLog no
AcceptEnv LANG LC_* OAR_*
Subsystem sftp /usr/lib/openssh/sftp-server
PidFile /run/sshd.pid
"""


def netns(node: Node) -> str:
    return PREFIX + node.short


def aliases(node: Node) -> list[str]:
    """`paradent-3.rennes.grid5000.fr paradent-3.rennes paradent-3`"""
    return [node.hostname, f"{node.short}.{node.site}", node.short]


class NodeFiles:
    """The files of a testbed under its work directory."""

    def __init__(self, workdir: Path, desc: Description):
        self.workdir, self.desc = Path(workdir), desc
        self.key = self.workdir / "keys" / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.hosts = self.workdir / "hosts"

    def node_dir(self, node: Node) -> Path:
        return self.workdir / "nodes" / node.short

    def deployment(self, node: Node) -> Path:
        """The record of the node's last successful reimage (gone with its private layer)."""
        return self.node_dir(node) / "deployment.json"

    def host_key(self, node: Node) -> Path:
        return self.node_dir(node) / "hostkey" / "ssh_host_ed25519_key"

    def generate_keys(self) -> None:
        """The testbed's user key and one host key per node (kept across bring-ups)."""
        todo = [(self.key, "g5kdeploy")] + [(self.host_key(n), f"root@{n.hostname}") for n in self.desc.nodes()]
        procs = []
        for path, comment in todo:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                procs.append(subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                               "-f", str(path)], stdin=subprocess.DEVNULL))
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError("ssh-keygen failed")

    def hosts_lines(self) -> list[str]:
        d = self.desc
        lines = [f"{d.frontend_address} oar-server frontend frontend.{d.name}"]
        lines += [f"{d.site_gateway(s)} gw.{s}" for s in d.sites]
        lines += [f"{n.address} {' '.join(aliases(n))}" for n in d.nodes()]
        return lines

    def write_access_files(self) -> None:
        """hosts file for the nodes, known_hosts, and the ssh client config."""
        write_atomic(self.hosts, "127.0.0.1 localhost\n" + "\n".join(self.hosts_lines()) + "\n")
        write_atomic(self.known_hosts, "".join(
            f"{','.join(aliases(n) + [n.address])} {' '.join(self.host_key(n).with_suffix('.pub').read_text().split()[:2])}\n"
            for n in self.desc.nodes()))
        names = ",".join([f"*.{s}" for s in self.desc.sites] + [f"*.{d}" for d in DOMAINS.values()] +
                         [n.short for n in self.desc.nodes()])
        # only for root: OAR's own ssh (user oar, port 6667) must keep its own settings
        write_atomic(SSH_CONFIG,
            "# written by g5kdeploy (invoke testbed-up), removed by invoke testbed-destroy\n"
            f"Match localuser root host {names}\n  User root\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n")

    def prepare_upper(self, node: Node) -> None:
        """A fresh private layer: sshd config and keys, hostname, no DNS, and root's shell
        files as a freshly installed Debian has them (the host's own, e.g. pyenv's, cost
        0.3 s per ssh command and are not part of the environment)."""
        d = self.node_dir(node)
        self.deployment(node).unlink(missing_ok=True)
        for sub in ("upper", "work", "root"):
            shutil.rmtree(d / sub, ignore_errors=True)
        u = d / "upper"
        (u / "etc" / "ssh").mkdir(parents=True)
        (u / "root" / ".ssh").mkdir(parents=True, mode=0o700)
        shutil.copy2(self.host_key(node), u / "etc/ssh/g5kdeploy_host_ed25519_key")
        (u / "etc/ssh/sshd_config").write_text(SSHD_CONFIG.format(address=node.address))
        (u / "etc/hostname").write_text(node.hostname + "\n")
        (u / "etc/resolv.conf").write_text("# testbed node: names come from /etc/hosts\nnameserver 127.0.0.1\n")
        shutil.copy2(self.key.with_suffix(".pub"), u / "root/.ssh/authorized_keys")
        shutil.copy2(self.key, u / "root/.ssh/id_ed25519")
        self._user_access(u)
        for name in ("bashrc", "profile"):
            shutil.copy2(f"/usr/share/base-files/dot.{name}", u / f"root/.{name}")

    @staticmethod
    def _user_access(u: Path) -> None:
        """As on a Grid'5000 node in its standard system: the job's user logs in with the
        key (here OAR's user, with the testbed's key) and becomes root with `sudo-g5k`
        (Grid'5000's own is sudo for the job's owner on its nodes; here sudo for that user)."""
        user = pwd.getpwnam(USER)
        home = Path(user.pw_dir)
        _dirs_like_lower(u, home / ".ssh", user)
        keys = u / home.relative_to("/") / ".ssh/authorized_keys"
        shutil.copy2(u / "root/.ssh/authorized_keys", keys)
        os.chown(keys, user.pw_uid, user.pw_gid)
        _dirs_like_lower(u, Path("/usr/local/bin"))
        (u / "usr/local/bin/sudo-g5k").write_text('#!/bin/sh\n# Grid\'5000\'s sudo-g5k, on a testbed node\n'
                                                  'exec sudo -n -- "$@"\n')
        (u / "usr/local/bin/sudo-g5k").chmod(0o755)
        _dirs_like_lower(u, Path("/etc/sudoers.d"))
        (u / "etc/sudoers.d/sudo-g5k").write_text(f"{USER} ALL=(root) NOPASSWD: ALL\n")
        (u / "etc/sudoers.d/sudo-g5k").chmod(0o440)

    def start(self, node: Node) -> subprocess.Popen:
        """Boot the node: its PID 1 builds the root and runs sshd."""
        init = resources.files(__package__).joinpath("node_init.sh")
        log = open(self.node_dir(node) / "console.log", "ab")
        return subprocess.Popen(
            ["ip", "netns", "exec", netns(node), "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork",
             "--kill-child", "--propagation", "private", "sh", str(init), str(self.workdir), node.short,
             node.hostname], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def _dirs_like_lower(upper: Path, path: Path, owner=None) -> None:
    """Make `path` in a private layer with each directory's owner and mode as the node's
    lower layer has them (an upper directory's own would hide them: a home owned by root);
    one missing below is made for `owner` (uid, gid), mode 0700."""
    for d in [*reversed(path.parents[:-1]), path]:
        made = upper / d.relative_to("/")
        if made.exists():
            continue
        made.mkdir()
        if d.exists():
            st = d.stat()
            os.chown(made, st.st_uid, st.st_gid)
            os.chmod(made, stat.S_IMODE(st.st_mode))
        else:
            os.chown(made, owner.pw_uid, owner.pw_gid)
            os.chmod(made, 0o700)


def netns_pids(name: str) -> list[int] | None:
    """The processes in a network namespace; None if `ip` could not tell."""
    p = sh("ip", "netns", "pids", name, check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else None


def stop_all_processes(name: str, timeout: float = 15) -> None:
    """SIGKILL every process of a namespace (all are ours: the node's init, sshd, jobs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = netns_pids(name)
        if pids is not None and not (pids := [p for p in pids if start_time(p) is not None]):
            return
        for pid in pids or []:
            kill(pid, timeout=0)
        time.sleep(0.05)


def wait_ssh(address: str, timeout: float = 30) -> bool:
    """Wait until an sshd answers with its banner on address:22."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=1) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
