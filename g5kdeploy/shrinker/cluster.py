"""The frontend side of Shrinker experiments: configure VMMs and one Redis per site,
start a virtual cluster on source-site VMMs, migrate it to the destination site
(stock QEMU, Shrinker, or Shrinker without deduplication), measure it and check it.
Shrinker's channels are keyed here: a fresh key per guest migration and one per destination
site's agents, copied (scp) into the nodes' root-only key directories, never on a command line."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from g5kdeploy import REDIS_CLI, chef, on_node, remote
from g5kdeploy.errors import UserError
from g5kdeploy.files import write_atomic
from g5kdeploy.progress import parallel
from g5kdeploy.shrinker.channel import KEYS, PEERS, key_text
from g5kdeploy.testbed.model import Node, NodeSet, heads
from g5kdeploy.vm import image as vm_image
from g5kdeploy.vm.qemu import QMP_SOCKET, RAM, VMS

AGENT_PORT, QEMU_PORT, REDIS_PORT = 7700, 7800, 6379
METHODS = ("stock", "stock-multifd", "stock-zstd", "shrinker", "shrinker-nodedup", "shrinker-uncompressed")
DEDUP = ("shrinker", "shrinker-uncompressed")     # Shrinker with the source site's Redis
STOCK_OPTIONS = {"stock": [], "stock-multifd": ["--multifd", 4], "stock-zstd": ["--multifd", 4, "--compression", "zstd"]}
DEST_PID = "/run/shrinker-destination.pid"


@dataclass
class Side:
    """The source or the destination of a migration: a site's Redis node and its VMMs."""
    redis: Node
    vmms: list[Node]


@dataclass
class GuestPlan:
    id: str
    source: Node
    destination: Node | None                # None: a guest that stays (no twin)
    nic: tuple[str, str] | None = None      # (address/prefix, gateway): a NIC on the VMMs' bridges
    peer: str = ""                          # the guest a `client` guest watches

    @property
    def address(self) -> str:
        """The NIC's address, without its prefix."""
        return self.nic[0].split("/")[0]


def sides(nodes: NodeSet, source: str, destination: str) -> tuple[Side, Side]:
    """Per site: the head node runs Redis, the others are VMMs."""
    by_site = heads(nodes)
    out = []
    for name in (source, destination):
        redis, vmms = by_site.get(name, (None, []))
        if not vmms:
            raise UserError(f"site {name} needs at least 2 nodes (Redis + a VMM)")
        out.append(Side(redis, list(vmms)))
    return out[0], out[1]


def configure(src: Side, dst: Side, image, logdir: Path | None = None, also: dict | None = None) -> None:
    """Converge the roles in parallel (each site's Redis and VMMs share a fresh password;
    `also`: more nodes, {node: role}); raise with each failed node's reason."""
    roles = {n: (role, {"g5kdeploy": {"address": n.address}}) for n, role in (also or {}).items()}
    for side in (src, dst):
        password = secrets.token_urlsafe(24)
        roles.update({n: (role, {"g5kdeploy": {"address": n.address, "redis_password": password}})
                      for n, role in [(side.redis, "shrinker-redis")] + [(v, "shrinker-vmm") for v in side.vmms]})
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-shrinker-") as tmp:
        chef.apply_all(roles, vm_image.boot_files(image, Path(tmp)), logdir=logdir)


def prepare(testbed, nodes: NodeSet, source: str, destination: str, logdir: Path | None = None,
            also: dict | None = None, around=lambda step: contextlib.nullcontext()) -> tuple[Side, Side]:
    """The nodes deployed, split into the two sides, their roles converged (and `also`'s,
    {node: role}); each step ("deploy", "configure") inside `around(step)`."""
    with around("deploy"):
        testbed.deploy(nodes)
    src, dst = sides(nodes, source, destination)
    with around("configure"):
        configure(src, dst, vm_image.build(), logdir, also)
    return src, dst


def _one(node: Node, module: str, *args) -> dict:
    """Run `g5kdeploy.shrinker.<module> <args>` on a node; its JSON output."""
    return remote.run_module(node, f"g5kdeploy.shrinker.{module}", *args)


@contextlib.contextmanager
def keys_shared(users: dict[str, list[Node]]):
    """A fresh key per name (a guest, or the destination agents' `peers`) in the key
    directory of the nodes that use it, for the block: each agent removes the key it reads,
    and a block that fails has what is left removed."""
    by_node: dict[Node, list[str]] = defaultdict(list)
    for name, nodes in users.items():
        for n in nodes:
            by_node[n].append(name)
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-keys-") as tmp:
        for name in users:
            write_atomic(os.path.join(tmp, f"{name}.key"), key_text(secrets.token_bytes(32)), 0o600)

        def give(node: Node) -> None:        # into the directory the shrinker-vmm role made
            sent = remote.put([os.path.join(tmp, f"{name}.key") for name in by_node[node]], [node], str(KEYS))
            if sent.failed:
                raise RuntimeError(f"{node.short}: keys not copied ({sent.summary()})")
        try:
            _each(give, list(by_node), "sharing migration keys")
            yield
        except BaseException:     # each agent removes a key once it has read it: only a failure leaves one
            remote.run(shlex.join(["rm", "-f", *(f"{KEYS}/{name}.key" for name in users)]), list(by_node))
            raise


def _each(fn, items, what: str) -> list:
    outcomes = parallel(fn, items, what)
    if failed := [f"{o.error}" for o in outcomes if not o.ok]:
        raise RuntimeError(f"{what}: " + "; ".join(failed))
    return [o.value for o in outcomes]


def plan_cluster(src: Side, dst: Side, count: int, prefix: str) -> list[GuestPlan]:
    """Guests round-robin on the source vmms, each with a destination VMM."""
    return [GuestPlan(f"{prefix}{k}", src.vmms[k % len(src.vmms)],
                      dst.vmms[k % len(dst.vmms)]) for k in range(count)]


@contextlib.contextmanager
def guests_running(plans: list[GuestPlan], workload: str, memory_mb: int, mb: int, rate: int):
    """The guests and their destination twins (if they have a destination), running for the
    block (all stopped when it ends, even half started)."""
    args = ["--memory", memory_mb, "--workload", workload, "--mb", mb, "--rate", rate]

    def nic(g: GuestPlan) -> list:
        if not g.nic:
            return []
        return ["--ip", g.nic[0], "--gateway", g.nic[1]] + (["--peer", g.peer] if g.peer else [])
    twinned = [g for g in plans if g.destination]
    try:
        _each(lambda g: _one(g.source, "vmm", "start", "--id", g.id, *args, *nic(g)), plans, "starting guests")
        _each(lambda g: _one(g.source, "vmm", "ready", "--id", g.id), plans, "waiting for the workloads")
        _each(lambda g: _one(g.destination, "vmm", "start", "--id", g.id, *args, *nic(g), "--incoming"), twinned,
              "destination twins")
        yield plans
    finally:
        ids = shlex.join(g.id for g in plans)        # each node stops those of them it holds
        remote.run(f"for i in {ids}; do [ -d {VMS}/\"$i\" ] && {on_node('g5kdeploy.shrinker.vmm')} stop --id \"$i\"; "
                   "done; true",
                   {n.hostname: n for g in plans for n in (g.source, g.destination) if n}.values())


@contextlib.contextmanager
def agents_running(dst: Side, *options):
    """One destination agent per destination VMM, in the background for the block (they
    share a fresh peers key)."""
    def start(n: Node):
        cmd = "exec " + shlex.join([*on_node("g5kdeploy.shrinker.destination").split(),
                                    "--listen", f"{n.address}:{AGENT_PORT}", "--redis", f"{dst.redis.address}:{REDIS_PORT}",
                                    *map(str, options)])
        # started once it listens (it has read its key by then); failed if it exits first
        r = remote.run(f"setsid sh -c {shlex.quote(cmd + ' > /var/log/shrinker-destination.log 2>&1')} "
                       f"< /dev/null & echo $! > {DEST_PID}; "
                       f"until ss -Hltn 'sport = :{AGENT_PORT}' | grep -q .; do "
                       f"kill -0 $(cat {DEST_PID}) || {{ tail -3 /var/log/shrinker-destination.log >&2; exit 1; }}; "
                       f"sleep 0.05; done", [n], timeout=60)[0]
        if not r.ok:
            raise RuntimeError(f"{n.short}: destination agent did not start: {r.error or r.stderr.strip()[-300:]}")
    try:
        with keys_shared({PEERS: dst.vmms}):
            _each(start, dst.vmms, "destination agents")     # each reads the key (and removes it)
        yield
    finally:
        remote.run(f"[ -f {DEST_PID} ] && kill $(cat {DEST_PID}); rm -f {DEST_PID}; true", dst.vmms)


def flush_redis(*sides: Side) -> None:
    remote.run(f"{REDIS_CLI} -p {REDIS_PORT} flushall", [s.redis for s in sides])


def migrate(plans: list[GuestPlan], method: str, src: Side, dst: Side, chunk: int = 4096, digest: str = "sha1",
            rate_mbit: float = 100, max_rounds: int = 8) -> list[dict]:
    """Migrate every guest at once; per guest the agent's (or QEMU's) report. Shrinker's source
    fails unless the twin's RAM equals its own at the stop; for stock QEMU, `ram_verified` says
    whether the source's RAM as sent equals the twin's before it started."""
    if method not in METHODS:
        raise UserError(f"unknown migration method {method!r}: use one of {', '.join(METHODS)}")
    shrinker = method.startswith("shrinker")
    port = {g.id: QEMU_PORT + k for k, g in enumerate(plans)}
    options = STOCK_OPTIONS.get(method, [])          # QEMU's built-in options, on both ends
    flags = ["--ignore-shared"] if shrinker else [*options, "--settle"]

    def listen(g: GuestPlan) -> dict:
        return _one(g.destination, "vmm", "incoming", "--id", g.id, "--address", g.destination.address,
                    "--port", port[g.id], *flags)

    def one(g: GuestPlan) -> dict:
        try:
            return attempt(g)
        except Exception:      # nothing stays at the destination; the guest goes on at the source
            for node, command in ((g.destination, "stop"), (g.source, "resume")):
                with contextlib.suppress(Exception):
                    _one(node, "vmm", command, "--id", g.id)
            raise

    def attempt(g: GuestPlan) -> dict:
        t0 = time.time()
        if shrinker:
            redis = ["--redis", f"{src.redis.address}:{REDIS_PORT}"] if method in DEDUP else []
            compression = "" if method == "shrinker-uncompressed" else "zstd"
            out = _one(g.source, "source", "--guest", g.id, "--ram", RAM.format(name=g.id),
                       "--qmp", VMS / g.id / QMP_SOCKET, "--to", f"{g.destination.address}:{AGENT_PORT}",
                       "--device-to", f"{g.destination.address}:{port[g.id]}", *redis, "--chunk", chunk,
                       "--digest", digest, "--compression", compression, "--rate-mbit", rate_mbit,
                       "--max-rounds", max_rounds)
        else:
            out = _one(g.source, "vmm", "stock-migrate", "--id", g.id, "--to", f"{g.destination.address}:{port[g.id]}",
                       *options, "--max-rounds", max_rounds)
            if out.get("status") == "completed":      # the source's RAM, as sent, against the twin's at its start
                twin = _one(g.destination, "vmm", "settled", "--id", g.id)
                out.update(ram_verified=twin["digest"] == out["ram_digest"], settle_copy_s=twin["copy_s"])
        return {**out, "guest": g.id, "start": t0, "end": time.time()}

    keys = keys_shared({g.id: [g.source, g.destination] for g in plans}) if shrinker else contextlib.nullcontext()
    with ThreadPoolExecutor(1) as pool:           # the twins told to listen while the keys are copied
        listening = pool.submit(_each, listen, plans, "destination QEMUs listening")
        with keys:
            listening.result()
            return _each(one, plans, f"migrating {len(plans)} guests ({method})")


def check(plans: list[GuestPlan], timeout: float = 10) -> list[dict]:
    """Every guest runs at the destination (its tick counter, one a second, advances) and
    no longer at the source. Its downtime, from QEMU's own run-state trace on both sides:
    the source's last vCPU stop to the destination's first start (any migration method)."""
    def one(g: GuestPlan) -> dict:
        first = _one(g.destination, "vmm", "ticks", "--id", g.id)
        deadline, later = time.monotonic() + timeout, first
        while later["running"] and later["tick"] <= first["tick"] and time.monotonic() < deadline:
            time.sleep(0.25)
            later = _one(g.destination, "vmm", "ticks", "--id", g.id)
        source = _one(g.source, "vmm", "runstate", "--id", g.id)
        stopped = [t for t, running, _ in source["events"] if not running]
        started = [t for t, running, _ in _one(g.destination, "vmm", "runstate", "--id", g.id)["events"] if running]
        ticking = later["running"] and later["tick"] > first["tick"]
        diagnosis = "" if ticking else json.dumps(_one(g.destination, "vmm", "diagnose", "--id", g.id))
        return {"guest": g.id, "runs_at_destination": ticking, "diagnosis": diagnosis,
                "source_gone": not source["running"], "ticks_before": first["tick"], "ticks_after": later["tick"],
                "downtime_s": round(started[0] - stopped[-1], 4) if stopped and started else None}
    return _each(one, plans, "checking the migrated guests")
