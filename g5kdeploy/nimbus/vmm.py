"""VMM agent, run on a VMM node by the service over ssh (as Nimbus' workspace-control):
`python3 -m g5kdeploy.nimbus.vmm start|stop|control|list ...`. Each guest gets a disk (its own copy,
or a qcow2 copy-on-write volume over the node's image cache), a tap on the node's bridge,
file-backed RAM and a QMP socket; its files live in /var/lib/g5kdeploy/vms/<id>/."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from g5kdeploy.nimbus import ec2
from g5kdeploy.nimbus.config import shareable
from g5kdeploy.vm import qemu
from g5kdeploy.vm.qemu import Guest, mac_for


def tap_name(instance: str) -> str:
    return "t" + instance[2:14]       # i-0123abcd... -> t0123abcd (IFNAMSIZ 15)


def start(a: argparse.Namespace) -> dict:
    rundir = qemu.VMS / a.id
    if (rundir / "spec.json").exists():
        raise SystemExit(f"{a.id} exists already on this VMM")
    rundir.mkdir(parents=True)
    t0 = time.monotonic()
    if a.backing:
        disk, fmt = rundir / "disk.qcow2", "qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", a.backing, str(disk)],
                       check=True, capture_output=True)
    elif a.move:
        disk, fmt = rundir / "disk.img", "raw"
        os.replace(a.move, disk)
    else:
        disk, fmt = rundir / "disk.img", "raw"
        subprocess.run(["cp", "--sparse=always", a.copy, str(disk)], check=True)
    volume_s = time.monotonic() - t0
    address = a.ip.split("/")[0]
    g = Guest.installed(a.id, disk, memory_mb=a.memory, cpus=a.cpus, tap=tap_name(a.id), mac=mac_for(address),
                        disk_format=fmt, shares=a.share, cmdline={"g5k_id": a.id, "g5k_ip": a.ip, "g5k_gw": a.gateway,
                                                  "g5k_name": a.name, "g5k_broker": a.broker, "g5k_ctx": a.ctx})
    g.save()
    g.plug(a.bridge)
    try:
        pid = g.start()
    except Exception:
        stop_guest(a.id)
        raise
    return {"id": a.id, "pid": pid, "tap": g.tap, "disk": str(disk), "volume_s": round(volume_s, 4)}


def stop_guest(instance: str) -> dict:
    """Quit the guest, remove its tap, volume, RAM file and run directory."""
    stopped = qemu.stop(instance)
    return {"id": instance, "stopped": stopped}


CONTROLS = {"pause": "stop", "resume": "cont", "reset": "system_reset"}    # -> QMP command


def control(instance: str, action: str) -> dict:
    """Pause (StopInstances: RAM and disk kept), resume (StartInstances) or reset
    (RebootInstances) a guest, through its QMP socket. A reset guest reboots from then on
    when it asks to (QEMU runs with -no-reboot, which would make a reset an exit)."""
    with qemu.QMP(Guest.load(instance).qmp_path) as q:
        if action == "reset":
            q.execute("set-action", reboot="reset")
        q.execute(CONTROLS[action])
        return {"id": instance, "status": q.execute("query-status")["status"]}


def running() -> list[dict]:
    out = []
    for spec in sorted(qemu.VMS.glob("*/spec.json")):
        g = Guest.load(spec.parent.name)
        out.append({"id": g.name, "pid": g.pid(), "disk": str(g.disk), "memory_mb": g.memory_mb})
    return out


def instance_id(text: str) -> str:
    """An instance id of ours: it names a directory, a tap and a RAM file here."""
    if not ec2.well_formed(text):
        raise argparse.ArgumentTypeError(f"not an instance id: {text!r}")
    return text


def shared_path(text: str) -> str:
    """A directory to share (config.shareable)."""
    if not shareable(text):
        raise argparse.ArgumentTypeError(f"not a shareable path: {text!r}")
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="g5kdeploy.nimbus.vmm")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("--id", required=True, type=instance_id)
    for opt in ("--ip", "--gateway", "--name", "--broker", "--ctx"):
        s.add_argument(opt, required=True)
    s.add_argument("--memory", type=int, default=128)
    s.add_argument("--cpus", type=int, default=1)
    s.add_argument("--bridge", default="br0")
    s.add_argument("--share", action="append", default=[], type=shared_path,
                   help="a directory of this VMM the guest may mount read-only (9p tags host0, host1, ...)")
    disk = s.add_mutually_exclusive_group(required=True)
    disk.add_argument("--move", help="take this raw image as the guest's own disk")
    disk.add_argument("--copy", help="copy this raw image as the guest's own disk")
    disk.add_argument("--backing", help="copy-on-write qcow2 volume over this cached raw image")
    t = sub.add_parser("stop")
    t.add_argument("ids", nargs="+", type=instance_id)
    c = sub.add_parser("control")
    c.add_argument("id", type=instance_id)
    c.add_argument("action", choices=sorted(CONTROLS))
    sub.add_parser("list")
    a = p.parse_args(argv)
    if a.command == "start":
        result = start(a)
    elif a.command == "stop":
        result = [stop_guest(i) for i in a.ids]
    elif a.command == "control":
        result = control(a.id, a.action)
    else:
        result = running()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
