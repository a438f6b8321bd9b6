"""Parallel remote execution on nodes with execo: ssh or TakTuk, put/get, chain broadcast.

Every call returns per-host results (exit code, stdout, stderr, duration); failed hosts
are reported and can be filtered out, never raised as one bulk exception."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import execo

from g5kdeploy import on_node
from g5kdeploy.errors import UserError
from g5kdeploy.remote import _execo_py3
from g5kdeploy.testbed.model import Node, expand_hostlist

_execo_py3.apply()
execo.logger.setLevel(logging.WARNING)
METHODS = ("ssh", "taktuk")
# user root; host keys and identities come from ssh_config (the local testbed writes one).
# No `-tt` (execo's default): stderr stays separate from stdout.
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "-o", "ConnectTimeout=20")
# a cloud instance has no known-hosts entry: guest addresses are reused by new guests with new host keys
GUEST_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR")
CONNECTION: dict = {}


def use_gateway(gateway: str | None) -> None:
    """Reach nodes through `user@host` (ssh ProxyJump: Grid'5000's access machine from
    outside), or directly (None). ssh, scp and TakTuk's connector (execo reads
    `taktuk_connector_options`, not `ssh_options`) all jump; through a gateway TakTuk
    connects every node from here (`-d -1`, no work stealing: nodes hold no key for the
    gateway), and `chain_put` enters the chain at its first node."""
    jump = ("-o", f"ProxyJump={gateway}") if gateway else ()
    CONNECTION.update({"ssh_options": SSH_OPTIONS + jump, "scp_options": SSH_OPTIONS + jump + ("-rp",),
                       "taktuk_connector_options": SSH_OPTIONS + jump,
                       "taktuk_options": ("-s", "-d", "-1") if gateway else ("-s",), "gateway": gateway})


def use_login(user: str = "root", sudo: str | None = None) -> None:
    """Log in to nodes as `user`; `sudo`: the command that gives root there (Grid'5000's
    sudo-g5k on the nodes of a job that is not a deploy job), put before every command run."""
    CONNECTION.update({"user": user, "sudo": sudo})


def reach(testbed, reservation=None) -> None:
    """Reach the testbed's nodes as its ssh settings say (through a gateway or not; as root,
    or for the nodes of a reservation that is not a deploy job, as the user with sudo)."""
    ssh = testbed.ssh_settings(deploy=getattr(reservation, "deploy", True))
    use_gateway(f"{ssh['gateway_user']}@{ssh['gateway']}" if ssh.get("gateway") else None)
    use_login(ssh["user"], ssh.get("sudo"))


def as_root(command: str, params: dict = CONNECTION) -> str:
    """The command as root on the nodes (through the login's sudo, if any)."""
    return f"{params['sudo']} sh -c {shlex.quote(command)}" if params.get("sudo") else command


def _params(hosts) -> dict:
    """How to reach the hosts: the nodes' CONNECTION, or the guests' (all of one kind)."""
    guests = [isinstance(h, Guest) for h in _listed(hosts)]
    if not any(guests):
        return CONNECTION
    if not all(guests):
        raise ValueError("nodes and guests are reached differently: give them in separate calls")
    return {**CONNECTION, "user": "root", "sudo": None, "ssh_options": CONNECTION["ssh_options"] + GUEST_OPTIONS,
            "scp_options": CONNECTION["scp_options"] + GUEST_OPTIONS}


def login(key: Path | str, address: str, *command: str) -> list[str]:
    """`ssh -i key root@address command` into a cloud instance, as a user types it."""
    return ["ssh", "-i", str(key), *GUEST_OPTIONS, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            f"root@{address}", *command]


@dataclass(frozen=True)
class Guest:
    """A cloud instance as a host of run, put, get and Stream: reached as root with the
    private key of its key pair (the user's own machine, not a node: no sudo). `name` says
    which it is in messages (site/instance id)."""
    address: str
    key: str
    name: str = ""

    @property
    def hostname(self) -> str:
        return self.address

    @property
    def short(self) -> str:
        return self.name or self.address


def gateway() -> str | None:
    """The gateway nodes are reached through (use_gateway), if any."""
    return CONNECTION.get("gateway")


use_gateway(None)
use_login()


@dataclass
class HostResult:
    host: str
    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    error: str = ""


class Results(list):
    """HostResults, one per host."""

    @property
    def ok(self) -> list[str]:
        return [r.host for r in self if r.ok]

    @property
    def failed(self) -> list[HostResult]:
        return [r for r in self if not r.ok]

    def by_host(self) -> dict[str, HostResult]:
        return {r.host: r for r in self}

    def summary(self) -> str:
        bad = "; ".join(f"{r.host}: {r.error or r.stderr.strip()[-200:] or f'exit {r.exit_code}'}"
                        for r in self.failed)
        return f"{len(self.ok)}/{len(self)} hosts ok" + (f" (failed: {bad})" if bad else "")


def _listed(hosts) -> list:
    """Node, Guest, NodeSet, names, a hostlist string -> a list of them."""
    if isinstance(hosts, str):
        return expand_hostlist(hosts)
    return [hosts] if isinstance(hosts, (Node, Guest)) else list(hosts)


def hostnames(hosts) -> list[str]:
    """Node, NodeSet, guests, names or a hostlist string -> names."""
    return [h.hostname if isinstance(h, (Node, Guest)) else str(h) for h in _listed(hosts)]


def _hosts(hosts) -> list[execo.Host]:
    listed = _listed(hosts)
    if not listed:
        raise UserError("no hosts given")
    return [execo.Host(h.address, user="root", keyfile=h.key) if isinstance(h, Guest)
            else execo.Host(hostnames([h])[0], user=CONNECTION["user"]) for h in listed]


def _results(processes: Iterable) -> Results:
    out = Results()
    for p in processes:
        duration = (p.end_date - p.start_date) if p.end_date and p.start_date else 0.0
        error = "timeout" if p.timeouted else (str(p.error_reason) if p.error else "")
        # execo 2.8.2 keeps the raw wait status (ssh via waitpid, TakTuk via perl's $?)
        code = None if p.exit_code is None else os.waitstatus_to_exitcode(p.exit_code)
        if code is not None and code < 0:
            error = error or f"killed by signal {-code}"
        if code == 255 and not error and p.stderr.strip():
            error = p.stderr.strip().splitlines()[-1]   # ssh's own failure (unknown host, refused...)
        out.append(HostResult(p.host.address, code == 0 and not error, code, p.stdout, p.stderr, duration, error))
    return out


def _quiet_process(p):
    p.nolog_exit_code = p.ignore_exit_code = p.nolog_error = p.ignore_error = True
    p.nolog_timeout = p.ignore_timeout = True
    return p


def _quiet(action):
    """Outcomes are reported by us, per host, not logged by execo."""
    for p in action.processes:
        _quiet_process(p)
    return action


def _quietly_run(action):
    return _results(_quiet(action).run().processes)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown remote method {method!r}: use one of {', '.join(METHODS)}")


def run(command: str, hosts, method: str = "ssh", timeout: float | None = None) -> Results:
    """Run `command` on every host in parallel; `timeout` (s) ends it on the host too."""
    _check_method(method)
    if timeout:
        command = f"timeout -k 2 {timeout} sh -c {shlex.quote(command)}"
    params = _params(hosts)
    command = as_root(command, params)
    cls = execo.Remote if method == "ssh" else execo.TaktukRemote
    results = _quietly_run(cls(command, _hosts(hosts), connection_params=params,
                               process_args={"timeout": timeout + 10 if timeout else None}))
    for r in results:
        if timeout and r.exit_code in (124, 137):
            r.ok, r.error = False, f"timeout after {timeout} s"
    return results


# ssh's own words for a failure -> what it means for a node, and what to do
WHY = (("Could not resolve hostname", "its name does not resolve (from outside Grid'5000, set a gateway)"),
       ("Connection refused", "no sshd answers (down, or still booting)"),
       ("No route to host", "no route to it (down, or another network)"),
       ("timed out", "no answer (off, or unreachable)"),
       ("timeout", "no answer in time (overloaded, or unreachable)"),
       ("Permission denied", "root login refused (not deployed with your key: deploy it)"),
       ("Host key verification failed", "its host key differs from the known one (reinstalled?)"))


def check(hosts, testbed=None, timeout: float = 20) -> dict[str, str]:
    """The hosts that cannot be reached as root now, each with why: what the testbed's OAR
    says first when given (dead, absent, suspected; held by no running job), then an ssh
    `true` on the others (ssh's failure said in plain words, `WHY`)."""
    names, why = hostnames(hosts), {}
    if testbed is not None:
        by_site: dict[str, list[str]] = {}
        for h in names:
            by_site.setdefault(testbed.node(h).site, []).append(h)
        for site, group in by_site.items():
            down = testbed.scheduler.down(site)
            held = testbed.scheduler.holders(site)
            why |= {h: f"OAR has it {down[h]}" if h in down else "held by no running OAR job"
                    for h in group if h in down or h not in held}
    todo = [h for h in names if h not in why]
    for r in (run("true", todo, timeout=timeout) if todo else []):
        if not r.ok:
            said = r.error or r.stderr.strip()
            why[r.host] = next((plain for words, plain in WHY if words in said), said.splitlines()[-1] if said else
                               f"exit {r.exit_code}")
    return why


def run_module(node, module: str, *args, timeout: float | None = 600) -> dict:
    """Run `python3 -m <module> <args>` from the sources on a node (each argument one word);
    the JSON it prints (`{}` for none). A failure raises RuntimeError with the node and its error."""
    r = run(shlex.join([*on_node(module).split(), *map(str, args)]), [node], timeout=timeout)[0]
    try:
        out = json.loads(r.stdout) if r.stdout.strip() else {}
    except json.JSONDecodeError:
        out = {}
    if not r.ok:
        why = out.get("error") if isinstance(out, dict) else None
        raise RuntimeError(f"{str(node).split('.')[0]}: {why or r.error or r.stderr.strip()[-300:]}")
    return out


def put(local_files: list[str | Path], hosts, remote_dir: str = ".", method: str = "ssh") -> Results:
    """Copy local files to every host (scp in parallel, or TakTuk's put), as the login user."""
    _check_method(method)
    for f in local_files:
        if not Path(f).exists():
            raise UserError(f"cannot copy {f}: no such local file")
    cls = execo.Put if method == "ssh" else execo.TaktukPut
    return _quietly_run(cls(_hosts(hosts), [str(f) for f in local_files], remote_dir, connection_params=_params(hosts)))


def get(hosts, remote_files: list[str], local_dir: str | Path) -> Results:
    """Fetch files from every host into local_dir (scp; hosts' files of the same name collide:
    use one local_dir per host or remote names that differ)."""
    return _quietly_run(execo.Get(_hosts(hosts), list(remote_files), str(local_dir), connection_params=_params(hosts)))


def chain_put(local_file: str | Path, hosts, remote_dir: str = "/tmp") -> Results:
    """Broadcast one file along a chain of hosts (execo ChainPut, Kastafior-style), then check
    its MD5 on every host: a host is ok only if its copy is identical."""
    local_file = Path(local_file)
    digest = hashlib.md5(local_file.read_bytes()).hexdigest()
    if gateway():
        _chain_from_first(local_file, _hosts(hosts), remote_dir)
    else:
        _quiet(execo.ChainPut(_hosts(hosts), [str(local_file)], remote_dir, connection_params=CONNECTION)).run()
    remote = shlex.quote(f"{remote_dir.rstrip('/')}/{local_file.name}")
    checked = run(f"echo {digest}' '{remote} | md5sum -c --quiet", hosts)
    for r in checked:
        if not r.ok and ("FAILED" in r.stdout + r.stderr or "No such file" in r.stderr):
            r.error = "copy missing or different"
    return checked


def _chain_from_first(local_file: Path, hosts: list[execo.Host], remote_dir: str) -> None:
    """ChainPut when nodes are reached through a gateway, where no TCP connection from here
    to a node is allowed: the file crosses the gateway once (scp to the first node), which
    then sends it down the chain of the others with execo's own chain script, as execo's
    ChainPut does from here (same arguments; index 0 is the sender)."""
    first, rest = hosts[0], hosts[1:]
    if not _quietly_run(execo.Put([first], [str(local_file)], remote_dir, connection_params=CONNECTION)).ok or not rest:
        return
    p = execo.config.make_connection_params(CONNECTION)
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-chain-") as tmp:
        chain_hosts = Path(tmp) / f"chainhosts-{os.getpid()}"
        chain_hosts.write_text("".join(f"{h.address}\n" for h in rest))
        script = Path(tmp) / f"chainput-{os.getpid()}"
        shutil.copy2(Path(execo.__file__).parent / "execo-chainput", script)
        _quietly_run(execo.TaktukPut(hosts, [str(script), str(chain_hosts)], "/tmp", connection_params=CONNECTION))
    port = execo.utils.get_port()
    source = f"{remote_dir.rstrip('/')}/{local_file.name}"

    def step(index: int) -> str:
        return shlex.join([f"/tmp/{script.name}", source, remote_dir, p["nc"], str(p["chainput_nc_client_timeout"]),
                           str(p["chainput_nc_server_timeout"]), str(port), str(p["chainput_host_retry"]),
                           str(p["chainput_chain_retry"]), str(p["chainput_try_delay"]), str(index),
                           f"/tmp/{chain_hosts.name}", "--autoremove"])
    steps = [step(i) for i in range(len(hosts))]
    _quiet(execo.ParallelActions([
        execo.TaktukRemote("{{steps[1:]}}", rest, connection_params=CONNECTION),
        execo.Remote(steps[0], [first], connection_params=CONNECTION)])).run()


class _Lines(execo.ProcessOutputHandler):
    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def read_line(self, process, stream, string):
        self.sink(string.rstrip("\n"))


class Stream:
    """A command running on one host over ssh whose stdout lines are read as they come
    (`for line in stream`), while the caller goes on acting on other hosts."""

    def __init__(self, command: str, host, timeout: float | None = None):
        self._lines: queue.Queue[str] = queue.Queue()
        params = _params([host])
        self._process = _quiet_process(execo.SshProcess(as_root(command, params), _hosts([host])[0],
                                                        connection_params=params, timeout=timeout,
                                                        stdout_handlers=[_Lines(self._lines.put)]))
        self._process.start()

    def __iter__(self):
        while True:
            try:
                yield self._lines.get(timeout=0.2)
            except queue.Empty:
                if self._process.ended and self._lines.empty():
                    return

    def result(self) -> HostResult:
        """The outcome, once the command ended."""
        self._process.wait()
        return _results([self._process])[0]

    def kill(self) -> None:
        if not self._process.ended:
            self._process.kill()
            self._process.wait()
