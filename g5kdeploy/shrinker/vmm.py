"""VMM-side commands for Shrinker experiments, run on nodes over ssh:
`python3 -m g5kdeploy.shrinker.vmm start|ready|ticks|diagnose|runstate|incoming|settle|settled|stock-migrate|resume|stop ...`.
Guests are disk-less (their workload runs from the initramfs), RAM in /dev/shm/g5kvm-<id>;
given --ip, a guest has a NIC on the VMM's bridge with that address, the same at the
destination (a migrated guest keeps its address and MAC), and serves the workload's counter
(or, workload `client`, watches --peer's: g5kdeploy.vine.watch)."""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import time

from g5kdeploy.files import write_atomic
from g5kdeploy.shrinker import chunks as C
from g5kdeploy.vm import qemu
from g5kdeploy.vm.qemu import QMP, Guest

TICK = re.compile(r"g5kdeploy-tick (\d+)")


# The source stops the guest itself before the device state moves; without the run state in
# the stream the twin's own -S decides: it stays paused until its mover starts it (Shrinker's
# destination agent, or `settle`).
# qboot boots -kernel directly; its 64 KiB ROM, unlike SeaBIOS's 256 KiB, keeps the part of the
# device state QEMU sends itself (ROMs are not shared RAM) at 38 KB instead of 206 KB a guest.
GUEST_ARGS = ["-global", "migration.store-global-state=off", "-bios", "qboot.rom"]
# Under TCG a stock migration keeps the guest's writes only if its RAM is not a multiple of
# 256 KiB (Guest.trim_kb); 64 KiB off keeps it a multiple of every Shrinker chunk size.
TCG_TRIM_KB = 64


def guest(a: argparse.Namespace, incoming: str | None = None) -> Guest:
    cmdline = {"g5k_workload": a.workload, "g5k_mb": str(a.mb), "g5k_rate": str(a.rate)}
    nic = {}
    if a.ip:
        cmdline.update(g5k_ip=str(a.ip), g5k_gw=str(a.gateway), **({"g5k_peer": str(a.peer)} if a.peer else {}))
        nic = {"tap": "g" + hashlib.sha1(a.id.encode()).hexdigest()[:12], "mac": qemu.mac_for(str(a.ip.ip))}
    # a twin stays paused once the state is in (-S): whoever moved it starts it, after its check
    return Guest.installed(a.id, None, memory_mb=a.memory, incoming=incoming,
                           extra=GUEST_ARGS + (["-S"] if incoming else []), cmdline=cmdline,
                           trim_kb=TCG_TRIM_KB if qemu.accelerator() == "tcg" else 0, **nic)


def start(a) -> dict:
    """Start the guest, or (--incoming) its twin waiting for a migration."""
    g = guest(a, "defer" if a.incoming else None)
    g.save()
    if g.tap:
        g.plug(a.bridge)
    try:
        return {"id": a.id, "pid": g.start()}
    except Exception:
        qemu.stop(a.id)
        raise


def ready(a) -> dict:
    g, deadline = Guest.load(a.id), time.monotonic() + a.timeout
    while "workload" not in g.serial() or "ready" not in g.serial().split("workload", 1)[1]:
        if time.monotonic() > deadline or not g.pid():
            raise SystemExit(f"{a.id} not ready after {a.timeout} s: {g.serial()[-300:]!r}")
        time.sleep(0.1)
    return {"id": a.id, "ready": True}


def ticks(a) -> dict:
    """The last tick the guest printed (it advances while the guest runs)."""
    found = TICK.findall(Guest.load(a.id).serial())
    return {"id": a.id, "tick": int(found[-1]) if found else -1, "running": Guest.load(a.id).pid() is not None}


def diagnose(a) -> dict:
    """For a guest that does not tick: its run state, a few samples of its instruction
    pointer (does a vCPU still execute?), its vCPU starts and stops, the end of its console."""
    g, rips, status = Guest.load(a.id), [], "exited"
    if g.pid():
        with QMP(g.qmp_path) as qmp:
            status = qmp.execute("query-status")["status"]
            for _ in range(3):
                regs = qmp.execute("human-monitor-command", **{"command-line": "info registers"})
                rips.append(m.group(1) if (m := re.search(r"RIP=(\w+)", regs)) else None)
                time.sleep(0.2)
    return {"id": a.id, "status": status, "rip": rips, "runstates": g.runstates(), "console_tail": g.serial()[-600:]}


def runstate(a) -> dict:
    """When the guest's vCPUs started and stopped (wall clock, from QEMU's trace), and
    whether its QEMU still runs."""
    g = Guest.load(a.id)
    return {"id": a.id, "events": g.runstates(), "running": g.pid() is not None}


def capabilities(qmp: QMP, a) -> None:
    caps = {"x-ignore-shared": a.ignore_shared, "multifd": a.multifd > 0}
    qmp.execute("migrate-set-capabilities", capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
    params = {"multifd-channels": a.multifd} if a.multifd else {}
    if a.compression:
        params["multifd-compression"] = a.compression
    if params:
        qmp.execute("migrate-set-parameters", **params)


def incoming(a) -> dict:
    """The twin listens for the migration; with --settle, `settle` waits in the background to
    start it (stock QEMU: nothing else would)."""
    g = Guest.load(a.id)
    with QMP(g.qmp_path) as qmp:
        capabilities(qmp, a)
        qmp.execute("migrate-incoming", uri=f"tcp:{a.address}:{a.port}")     # where only the source needs it
    if a.settle:
        with open(g.rundir / "settle.log", "wb") as log:
            subprocess.Popen([sys.executable, "-m", "g5kdeploy.shrinker.vmm", "settle", "--id", a.id],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return {"id": a.id, "incoming": f"{a.address}:{a.port}"}


def settle(a) -> dict:
    """Once QEMU has loaded the migrated state (paused, -S): copy the RAM, start the guest, then
    write the copy's SHA-256 to settled.json, for the source's RAM to be compared with (the
    check Shrinker makes; the copy is in the downtime, as Shrinker's snapshot is)."""
    g = Guest.load(a.id)
    copy = bytearray(os.path.getsize(g.ram_path))           # allocated before the stop
    with QMP(g.qmp_path, timeout=600) as qmp:
        while (status := qmp.execute("query-status")["status"]) == "inmigrate":
            time.sleep(0.001)
        t0 = time.monotonic()
        fd = os.open(g.ram_path, os.O_RDONLY)
        try:
            C.read_into(fd, copy)
        finally:
            os.close(fd)
        copy_s = time.monotonic() - t0
        if status == "paused":
            qmp.execute("cont")
    out = {"id": a.id, "status": status, "copy_s": round(copy_s, 4), "digest": hashlib.sha256(copy).hexdigest()}
    write_atomic(g.rundir / "settled.json", json.dumps(out))
    return out


def settled(a) -> dict:
    """What `settle` found (it waits up to --timeout for it)."""
    path, deadline = Guest.load(a.id).rundir / "settled.json", time.monotonic() + a.timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{a.id}: not settled after {a.timeout} s (see settle.log)")
        time.sleep(0.02)
    return json.loads(path.read_text())


def stock_migrate(a) -> dict:
    """QEMU's own pre-copy migration to a twin started with --incoming; query-migrate at the end.
    After --max-rounds dirty-page passes it stops and copies, whatever the downtime (as
    Shrinker does after its last round): a guest dirtying faster than its share of the WAN
    would never converge."""
    g, forced = Guest.load(a.id), []

    def bound(info: dict) -> None:
        if not forced and info.get("ram", {}).get("dirty-sync-count", 0) > a.max_rounds:
            qmp.execute("migrate-set-parameters", **{"downtime-limit": 600_000})
            forced.append(True)

    # the monitor does not answer while QEMU copies the last dirty pages (it holds the big
    # lock): for a forced stop of a busy guest over a shared WAN, that is tens of seconds
    with QMP(g.qmp_path, timeout=600) as qmp:
        capabilities(qmp, a)
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": 10 ** 12})    # no 32 MiB/s default cap
        t0 = time.monotonic()
        qmp.execute("migrate", uri=f"tcp:{a.to}")
        info = qmp.wait_migration(0.02, each=bound)
        elapsed = time.monotonic() - t0
        if info.get("status") == "completed":            # the RAM as it was sent (paused since)
            info["ram_digest"] = C.file_digest(str(g.ram_path))
            qmp.execute("quit")
    return {"id": a.id, "wall_s": round(elapsed, 4), "forced_stop": bool(forced), **info}


def resume(a) -> dict:
    """After a failed migration: the source guest runs again, stopped before its state moved
    (paused) or after (postmigrate: the destination's copy was refused and is stopped first)."""
    with QMP(Guest.load(a.id).qmp_path) as qmp:
        status = qmp.execute("query-status")["status"]
        if status in ("paused", "postmigrate"):
            qmp.execute("cont")
    return {"id": a.id, "was": status}


def stop(a) -> dict:
    return {"id": a.id, "stopped": qemu.stop(a.id)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="g5kdeploy.shrinker.vmm")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("start", "ready", "ticks", "diagnose", "runstate", "incoming", "settle", "settled", "stock-migrate",
                 "resume", "stop"):
        s = sub.add_parser(name)
        s.add_argument("--id", required=True)
        if name == "start":
            s.add_argument("--memory", type=int, default=128)
            s.add_argument("--workload", default="idle")
            s.add_argument("--mb", type=int, default=32)
            s.add_argument("--rate", type=int, default=4)
            s.add_argument("--incoming", action="store_true")
            s.add_argument("--ip", type=ipaddress.IPv4Interface, help="address/prefix of the guest's NIC")
            s.add_argument("--gateway", type=ipaddress.IPv4Address, help="its default router")
            s.add_argument("--bridge", default="br0", help="the VMM's bridge its tap joins")
            s.add_argument("--peer", type=ipaddress.IPv4Address, help="the guest a `client` workload watches")
        if name in ("ready", "settled"):
            s.add_argument("--timeout", type=float, default=120)
        if name in ("incoming", "stock-migrate"):
            s.add_argument("--ignore-shared", action="store_true", help="device state only (Shrinker)")
            s.add_argument("--multifd", type=int, default=0)
            s.add_argument("--compression", default="")
        if name == "incoming":
            s.add_argument("--address", required=True, type=ipaddress.IPv4Address,
                           help="this node's address the source reaches")
            s.add_argument("--port", type=int, required=True)
            s.add_argument("--settle", action="store_true", help="start the guest once migrated, after a RAM copy")
        if name == "stock-migrate":
            s.add_argument("--to", required=True)
            s.add_argument("--max-rounds", type=int, default=8)
    a = p.parse_args(argv)
    json.dump(globals()[a.command.replace("-", "_")](a), sys.stdout)


if __name__ == "__main__":
    main()
