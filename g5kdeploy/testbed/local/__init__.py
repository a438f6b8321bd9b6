"""The embedded default testbed: Grid'5000 in a box, made of real parts (needs root).

Nodes are namespaces with an overlay root and an sshd, sites are bridges behind router
namespaces joined by a backbone, links are shaped with tc, and a real OAR 2.5.9 on the
frontend (this host) schedules the nodes. Everything created is journaled first."""
from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import time
from pathlib import Path

from g5kdeploy import HOME, work_dir
from g5kdeploy.errors import UserError
from g5kdeploy.files import write_atomic
from g5kdeploy.progress import parallel
from g5kdeploy.testbed import Feature, Testbed
from g5kdeploy.testbed import description as descriptions
from g5kdeploy.testbed.description import Description, parse_rate
from g5kdeploy.testbed.local import network, oar_server
from g5kdeploy.testbed.local.nodes import HOSTS, HOSTS_TAG, SSH_CONFIG, NodeFiles, netns, stop_all_processes, wait_ssh
from g5kdeploy.testbed.local.state import Journal
from g5kdeploy.testbed.local.system import kill, processes, replace_block, require_root, sh
from g5kdeploy.testbed.model import NodeSet, expand_hostlist

log = logging.getLogger(__name__)
DEFAULT_HOME = HOME


class LocalTestbed(Testbed):
    kind = "local"
    environments = ("debian12-g5kdeploy",)   # named root filesystems nodes can be deployed with
    features = frozenset(Feature)
    queues = False                           # one user: a request busy nodes cannot meet is refused
    # batch jobs run as the OAR user (OAR refuses root); the toolkit's batch tasks run as root
    # through sudo and a root-owned wrapper, nothing else
    batch_invoke = f"sudo -n {oar_server.BATCH}"

    def __init__(self, desc: Description, workdir: Path = DEFAULT_HOME):
        super().__init__()
        self.description, self.workdir = desc, Path(workdir)
        self.journal = Journal(self.workdir / "state.jsonl")
        self.files = NodeFiles(self.workdir, desc)
        self.scheduler = oar_server.client()

    # -- life cycle ---------------------------------------------------------------------
    @classmethod
    def up(cls, desc: Description | None = None, workdir: Path = DEFAULT_HOME) -> "LocalTestbed":
        """Bring the testbed up (a no-op when this description is already up and healthy)."""
        require_root()
        oar_server.check_installed()
        desc = desc or descriptions.load()
        workdir = work_dir(workdir)
        journal = Journal(workdir / "state.jsonl")
        if journal.exists():
            try:
                running = cls.attach(workdir, check=False)
            except UserError:   # a journal without its description: an interrupted destroy
                running = None
            if running and running.healthy():
                if running.description.source != desc.source:
                    raise UserError("another testbed description is up: invoke testbed-destroy first")
                return running
            log.warning("leftovers of an earlier testbed found: destroying them first")
            destroy(workdir)
        tb = cls(desc, workdir)
        try:
            tb._build()
        except BaseException:
            destroy(workdir)
            raise
        return tb

    def _build(self) -> None:
        d, j, f = self.description, self.journal, self.files
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.workdir / "description.json", json.dumps(d.source, indent=1))
        f.generate_keys()
        j.record("hosts_block")
        replace_block(HOSTS, HOSTS_TAG, f.hosts_lines())
        j.record("file", path=str(SSH_CONFIG))
        f.write_access_files()
        network.build(d, j)
        self._write_rates({"lan": {s: d.lan_rate for s in d.sites},
                           "wan": {"|".join(sorted(p)): d.wan_rate_between(*p) for p in self._site_pairs()}})
        self._apply_rates()
        nodes = d.nodes()
        oar_server.ensure_user()                # its login on the nodes is set up with them
        for n in nodes:
            f.prepare_upper(n)
            f.start(n)
        down = [o.item for o in parallel(lambda n: wait_ssh(n.address) or _raise(f"sshd of {n} not up"),
                                         nodes, "booting nodes") if not o.ok]
        if down:
            raise RuntimeError(f"nodes did not boot: {NodeSet(down)} (see {self.workdir}/nodes/*/console.log)")
        oar_server.configure(d)
        oar_server.start_postgres(j, d)
        oar_server.prepare_database(d)
        oar_server.start_frontend_sshd(j, d, self.workdir)
        oar_server.allow_batch_jobs(j)
        oar_server.start_almighty(j)
        j.record("ready")

    @classmethod
    def running(cls) -> "LocalTestbed":
        """The default testbed: the one that is up, or brought up now."""
        return cls.attach() if is_up() else cls.up()

    @classmethod
    def attach(cls, workdir: Path = DEFAULT_HOME, check: bool = True) -> "LocalTestbed":
        """The testbed that is up in `workdir`."""
        path = Path(workdir) / "description.json"
        if not path.exists():
            raise UserError("no local testbed is up: run `invoke testbed-up` first")
        work_dir(workdir)
        tb = cls(descriptions.parse(json.loads(path.read_text()), str(path)), workdir)
        if check and not tb.healthy():
            raise UserError("the local testbed is not healthy (interrupted or crashed): "
                            "run `invoke testbed-destroy testbed-up`")
        return tb

    def healthy(self) -> bool:
        entries = self.journal.entries()
        return ({"kind": "ready"} in entries
                and oar_server.pidfile_process(oar_server.ALMIGHTY_PID, "Almighty") is not None
                and all(Path("/run/netns", netns(n)).exists() for n in self.description.nodes()))

    def destroy(self) -> None:
        destroy(self.workdir)

    # -- nodes ------------------------------------------------------------------------------
    def nodes(self, hosts: str | None = None) -> NodeSet:
        every = self.description.nodes()
        if hosts is None:
            return every
        by_name = {a: n for n in every for a in (n.hostname, f"{n.short}.{n.site}", n.short)}
        unknown = [h for h in expand_hostlist(hosts) if h not in by_name]
        if unknown:
            raise UserError(f"unknown node(s) {', '.join(unknown)}: this testbed has {every}")
        return NodeSet(by_name[h] for h in expand_hostlist(hosts))

    # -- OAR (reserve and release are shared: testbed/__init__.py) ------------------------------
    def _submitted(self, site: str, job: int) -> None:
        self.journal.record("oar_job", id=job)

    def _ended(self, site: str, job: int) -> None:
        self.journal.forget("oar_job", id=job)

    # -- Kadeploy analog ----------------------------------------------------------------------
    def reimage(self, nodes: NodeSet, environment: str) -> dict:
        """Reimage nodes in parallel: kill everything on them, wipe their private layer, boot;
        each node's outcome is recorded in its directory (`deployments`)."""
        def reimage(node):
            started = time.time()
            stop_all_processes(netns(node))
            self.files.prepare_upper(node)
            self.files.start(node)
            if not wait_ssh(node.address):
                raise RuntimeError(f"sshd did not come back (see {self.files.node_dir(node) / 'console.log'})")
            write_atomic(self.files.deployment(node), json.dumps({"environment": environment, "at": started}))

        return {o.item.hostname: o for o in parallel(reimage, nodes, f"deploying {environment}")}

    def deployments(self, nodes: NodeSet) -> dict[str, tuple[str, float]]:
        out = {}
        for n in nodes:
            if (record := self.files.deployment(n)).is_file():
                d = json.loads(record.read_text())
                out[n.hostname] = (d["environment"], d["at"])
        return out

    def output_dir(self) -> Path:
        return Path(pwd.getpwnam(oar_server.USER).pw_dir)

    def ssh_settings(self, deploy: bool = True) -> dict:
        """root with the testbed's key; for other jobs' nodes, OAR's user with sudo-g5k."""
        return {"user": "root" if deploy else oar_server.USER, "keyfile": str(self.files.key), "port": 22} | \
            ({} if deploy else {"sudo": "sudo-g5k"})

    # -- network --------------------------------------------------------------------------------
    def shape(self, a: str, b: str, rate: str) -> None:
        for site in (a, b):
            if site not in self.description.sites:
                raise UserError(f"unknown site {site!r}: this testbed has {', '.join(self.description.sites)}")
        rates = self.rates()
        if a == b:
            rates["lan"][a] = parse_rate(rate)
        else:
            rates["wan"]["|".join(sorted((a, b)))] = parse_rate(rate)
        self._write_rates(rates)
        self._apply_rates({a, b})

    def gateway(self, site: str) -> tuple[str, list[str]]:
        """The site's router namespace: its WAN address is the site's public address."""
        if site not in self.description.sites:
            raise UserError(f"unknown site {site!r}: this testbed has {', '.join(self.description.sites)}")
        return self.description.site_wan_address(site), ["ip", "netns", "exec", network.router(site)]

    def wan_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes that left (tx) and entered (rx) each site through its WAN uplink so far,
        read from the interface counters of the site router."""
        out = {}
        for site in self.description.sites:
            stats = json.loads(sh("ip", "-n", network.router(site), "-s", "-j", "link", "show", "wan0").stdout)
            s64 = stats[0]["stats64"]
            out[site] = {"tx": s64["tx"]["bytes"], "rx": s64["rx"]["bytes"]}
        return out

    def rates(self) -> dict:
        """Configured rates in bit/s: {'lan': {site: r}, 'wan': {'a|b': r}}."""
        return json.loads((self.workdir / "rates.json").read_text())

    def _write_rates(self, rates: dict) -> None:
        write_atomic(self.workdir / "rates.json", json.dumps(rates, indent=1))

    def _site_pairs(self) -> list[frozenset]:
        s = list(self.description.sites)
        return [frozenset((x, y)) for i, x in enumerate(s) for y in s[i + 1:]]

    def _apply_rates(self, sites: set[str] | None = None) -> None:
        r = self.rates()
        wan = {frozenset(k.split("|")): v for k, v in r["wan"].items()}
        for site in sites or self.description.sites:
            network.apply(network.lan_commands(self.description, site, r["lan"][site]))
            if len(self.description.sites) > 1:
                network.apply(network.wan_commands(self.description, site, wan))


def _raise(msg: str):
    raise RuntimeError(msg)


def is_up(workdir: Path = DEFAULT_HOME) -> bool:
    """Whether a local testbed, whole or what a crash left of one, is on this host."""
    return Journal(Path(workdir) / "state.jsonl").exists()


def destroy(workdir: Path = DEFAULT_HOME) -> list[str]:
    """Undo everything the journal names, newest first; idempotent, works after a crash.
    Returns the problems met (each also logged); nothing is left half-undone silently."""
    require_root()
    journal = Journal(work_dir(workdir) / "state.jsonl")
    entries = journal.entries()
    problems: list[str] = []
    namespaces = [e["name"] for e in entries if e["kind"] == "netns"]
    jobs = [e["id"] for e in entries if e["kind"] == "oar_job"]
    if jobs and oar_server.pidfile_process(oar_server.ALMIGHTY_PID, "Almighty"):
        try:
            oar = oar_server.client()
            oar.delete("", *jobs)
            oar.wait_ended([("", j) for j in jobs], timeout=30)
        except Exception as e:  # best effort: their processes are ended below
            log.warning("destroy: OAR did not end jobs %s (%s): ending their processes", jobs, e)
    parallel(stop_all_processes, namespaces, "stopping nodes")
    for e in reversed(entries):
        try:
            _undo(e)
        except Exception as err:
            problems.append(f"{e}: {err}")
    for p in oar_server.jobs_processes():   # jobs' processes oardel did not reach (OAR server down)
        kill(p.pid, term_first=True, timeout=2)
    for p in problems:
        log.error("destroy: %s", p)
    for sub in ("upper", "work", "root"):
        for d in (Path(workdir) / "nodes").glob(f"*/{sub}"):
            shutil.rmtree(d, ignore_errors=True)
    for name in ("description.json", "rates.json"):
        (Path(workdir) / name).unlink(missing_ok=True)
    if not problems:
        journal.remove()
    return problems


def _undo(e: dict) -> None:
    kind = e["kind"]
    if kind == "pidfile":
        oar_server.stop_pidfile(e["path"], e["match"])
    elif kind == "postgres":
        oar_server.stop_postgres(e["version"])
    elif kind == "netns":
        stop_all_processes(e["name"])
        if Path("/run/netns", e["name"]).exists():
            sh("ip", "netns", "del", e["name"])
    elif kind == "link":
        sh("ip", "link", "del", e["name"], check=False)
    elif kind == "route":
        sh("ip", "route", "del", *e["spec"], check=False)
    elif kind == "rule":
        sh("ip", "rule", "del", "pref", str(int(e["pref"])), check=False)
    elif kind == "file" and e["path"] in map(str, (SSH_CONFIG, oar_server.SUDOERS, oar_server.BATCH)):   # ours only
        Path(e["path"]).unlink(missing_ok=True)
    elif kind == "hosts_block":
        replace_block(HOSTS, HOSTS_TAG, None)


def leftovers(workdir: Path = DEFAULT_HOME) -> list[str]:
    """Anything of a local testbed still on this host (empty after a complete destroy)."""
    from g5kdeploy.testbed.local.nodes import PREFIX
    found = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(PREFIX)] \
        if Path("/run/netns").exists() else []
    found += [f"link {network.FRONTEND_LINK}"] if Path("/sys/class/net", network.FRONTEND_LINK).exists() else []
    found += [f"ip rule {r}" for r in network.our_rules()]
    found += [f"mount {line.split()[1]}" for line in Path("/proc/mounts").read_text().splitlines()
              if PREFIX in line.split()[1] or line.split()[0].startswith(PREFIX)]
    found += [f"process {p.pid} ({p.cmdline[:80]})" for p in processes() if str(workdir) in p.cmdline]
    found += [f"OAR process {p.pid} ({p.cmdline[:80]})" for p in oar_server.jobs_processes()]
    if oar_server.pidfile_process(oar_server.ALMIGHTY_PID, "Almighty"):
        found.append("OAR server (Almighty)")
    found += [f"file {p}" for p in (SSH_CONFIG, oar_server.SUDOERS, oar_server.BATCH, Path(workdir) / "state.jsonl")
              if p.exists()]
    if f"# BEGIN {HOSTS_TAG}" in HOSTS.read_text():
        found.append(f"{HOSTS} block")
    return found
