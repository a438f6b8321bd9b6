"""The frontend side of Shrinker experiments: configure VMMs and one Redis per site,
start a virtual cluster on source-site VMMs, migrate it to the destination site
(stock QEMU, Shrinker, or Shrinker without deduplication), measure it and check it."""
from __future__ import annotations

import contextlib
import json
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from g5kdeploy import chef, on_node, remote
from g5kdeploy.errors import UserError
from g5kdeploy.progress import parallel
from g5kdeploy.testbed.model import Node, NodeSet, heads
from g5kdeploy.vm import image as vm_image
from g5kdeploy.vm.qemu import QMP_SOCKET, RAM, VMS

AGENT_PORT, QEMU_PORT, REDIS_PORT = 7700, 7800, 6379
METHODS = ("stock", "stock-multifd", "stock-zstd", "shrinker", "shrinker-nodedup")
STOCK_OPTIONS = {"stock": "", "stock-multifd": "--multifd 4", "stock-zstd": "--multifd 4 --compression zstd"}
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
    destination: Node


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


def configure(src: Side, dst: Side, image, logdir: Path | None = None) -> None:
    """Converge the roles in parallel; raise with each failed node's reason."""
    roles = {n: ("shrinker-redis", {"g5kdeploy": {"address": n.address}}) for n in (src.redis, dst.redis)}
    roles.update({n: ("shrinker-vmm", {"g5kdeploy": {"address": n.address}})
                  for n in src.vmms + dst.vmms})
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-shrinker-") as tmp:
        chef.apply_all(roles, vm_image.boot_files(image, Path(tmp)), logdir=logdir)


def _one(node: Node, command: str) -> dict:
    """Run `g5kdeploy.shrinker.<module> <args>` on a node; its JSON output."""
    module, _, args = command.partition(" ")
    return remote.run_module(node, f"g5kdeploy.shrinker.{module}", args)


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
    """The guests and their destination twins, running for the block (all stopped when it
    ends, even half started)."""
    args = f"--memory {memory_mb} --workload {workload} --mb {mb} --rate {rate}"
    try:
        _each(lambda g: _one(g.source, f"vmm start --id {g.id} {args}"), plans, "starting guests")
        _each(lambda g: _one(g.source, f"vmm ready --id {g.id}"), plans, "waiting for the workloads")
        _each(lambda g: _one(g.destination, f"vmm start --id {g.id} {args} --incoming"), plans, "destination twins")
        yield plans
    finally:
        remote.run(f"for d in {VMS}/*; do [ -d $d ] && {on_node('g5kdeploy.shrinker.vmm')} stop --id $(basename $d); done; true",
                   {n.hostname: n for g in plans for n in (g.source, g.destination)}.values())


@contextlib.contextmanager
def agents_running(dst: Side, options: str = ""):
    """One destination agent per destination VMM, in the background for the block."""
    def start(n: Node):
        cmd = (f"exec {on_node('g5kdeploy.shrinker.destination')} --listen {n.address}:{AGENT_PORT} --redis {dst.redis.address}:{REDIS_PORT} "
               f"{options}")
        r = remote.run(f"setsid sh -c {shlex.quote(cmd + ' > /var/log/shrinker-destination.log 2>&1')} "
                       f"< /dev/null & echo $! > {DEST_PID}; sleep 0.5; kill -0 $(cat {DEST_PID})", [n])[0]
        if not r.ok:
            raise RuntimeError(f"{n.short}: destination agent did not start")
    try:
        _each(start, dst.vmms, "destination agents")
        yield
    finally:
        remote.run(f"[ -f {DEST_PID} ] && kill $(cat {DEST_PID}); rm -f {DEST_PID}; true", dst.vmms)


def flush_redis(*sides: Side) -> None:
    remote.run(f"redis-cli -p {REDIS_PORT} flushall", [s.redis for s in sides])


def migrate(plans: list[GuestPlan], method: str, src: Side, dst: Side, chunk: int = 4096, digest: str = "sha1",
            rate_mbit: float = 100, max_rounds: int = 8) -> list[dict]:
    """Migrate every guest at once; per guest the agent's (or QEMU's) report."""
    if method not in METHODS:
        raise UserError(f"unknown migration method {method!r}: use one of {', '.join(METHODS)}")
    shrinker = method.startswith("shrinker")
    port = {g.id: QEMU_PORT + k for k, g in enumerate(plans)}
    options = STOCK_OPTIONS.get(method, "")          # QEMU's built-in options, on both ends
    flags = "--ignore-shared" if shrinker else options
    _each(lambda g: _one(g.destination, f"vmm incoming --id {g.id} --port {port[g.id]} {flags}"), plans,
          "destination QEMUs listening")

    def one(g: GuestPlan) -> dict:
        try:
            return attempt(g)
        except Exception:      # the guest goes on at the source; nothing stays at the destination
            for node, command in ((g.source, "resume"), (g.destination, "stop")):
                with contextlib.suppress(Exception):
                    _one(node, f"vmm {command} --id {g.id}")
            raise

    def attempt(g: GuestPlan) -> dict:
        t0 = time.time()
        if shrinker:
            redis = f"--redis {src.redis.address}:{REDIS_PORT}" if method == "shrinker" else ""
            out = _one(g.source, f"source --guest {g.id} --ram {RAM.format(name=g.id)} "
                                 f"--qmp {VMS / g.id / QMP_SOCKET} "
                                 f"--to {g.destination.address}:{AGENT_PORT} "
                                 f"--device-to {g.destination.address}:{port[g.id]} {redis} "
                                 f"--chunk {chunk} --digest {digest} --rate-mbit {rate_mbit} --max-rounds {max_rounds}")
        else:
            out = _one(g.source, f"vmm stock-migrate --id {g.id} --to {g.destination.address}:{port[g.id]} {options} "
                                 f"--max-rounds {max_rounds}")
        return {**out, "guest": g.id, "start": t0, "end": time.time()}

    return _each(one, plans, f"migrating {len(plans)} guests ({method})")


def check(plans: list[GuestPlan], timeout: float = 10) -> list[dict]:
    """Every guest runs at the destination (its tick counter, one a second, advances) and
    no longer at the source. Its downtime, from QEMU's own run-state trace on both sides:
    the source's last vCPU stop to the destination's first start (any migration method)."""
    def one(g: GuestPlan) -> dict:
        first = _one(g.destination, f"vmm ticks --id {g.id}")
        deadline, later = time.monotonic() + timeout, first
        while later["running"] and later["tick"] <= first["tick"] and time.monotonic() < deadline:
            time.sleep(0.25)
            later = _one(g.destination, f"vmm ticks --id {g.id}")
        source = _one(g.source, f"vmm runstate --id {g.id}")
        stopped = [t for t, running, _ in source["events"] if not running]
        started = [t for t, running, _ in _one(g.destination, f"vmm runstate --id {g.id}")["events"] if running]
        ticking = later["running"] and later["tick"] > first["tick"]
        diagnosis = "" if ticking else json.dumps(_one(g.destination, f"vmm diagnose --id {g.id}"))
        return {"guest": g.id, "runs_at_destination": ticking, "diagnosis": diagnosis,
                "source_gone": not source["running"], "ticks_before": first["tick"], "ticks_after": later["tick"],
                "downtime_s": round(started[0] - stopped[-1], 4) if stopped and started else None}
    return _each(one, plans, "checking the migrated guests")
