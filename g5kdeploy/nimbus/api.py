"""The cloud's EC2 Query API and scheduler, on the service node:
`python3 -m g5kdeploy.nimbus.api [/etc/nimbus/cloud.json]`. boto3's ec2 client and the AWS
CLI work against it unchanged (Signature Version 4 or 2): instances (Run, Describe with
filters and pages, Terminate, Reboot, Stop/Start keeping RAM and disk, DescribeInstanceStatus),
regions (one per cloud of the federation) and zones, here; images, key pairs and tags in
their own modules (mixins of Service)."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import redis

from g5kdeploy import on_node
from g5kdeploy import signature
from g5kdeploy.nimbus import ec2, propagation, ssh, web
from g5kdeploy.nimbus.config import INSTANCE_CPUS, INSTANCE_TYPES, PROPAGATION_MODES, Cloud
from g5kdeploy.nimbus.ec2 import EC2Error
from g5kdeploy.nimbus.images import ImageActions
from g5kdeploy.nimbus.keypairs import KeyPairActions
from g5kdeploy.nimbus.tags import TagActions
from g5kdeploy.nimbus.store import Store
from g5kdeploy.vm.qemu import VMS

log = logging.getLogger("nimbus.api")
VMM = on_node("g5kdeploy.nimbus.vmm")
ALIVE = ("pending", "running")
HOLDING = ALIVE + ("shutting-down", "stopping", "stopped")      # states whose guest holds VMM memory
INSTANCE_FILTERS = {"instance-state-name", "instance-state-code", "instance-id", "image-id", "instance-type",
                    "private-ip-address", "ip-address", "availability-zone", "reservation-id", "key-name",
                    "launch-index", "private-dns-name", "dns-name"}
STATUS_FILTERS = {"availability-zone", "instance-state-name", "instance-state-code", "instance-status.status",
                  "system-status.status"}


def guest_name(address: str, site: str) -> str:
    return "vm-" + "-".join(address.split(".")[2:]) + "." + site


class Service(ImageActions, KeyPairActions, TagActions):
    def __init__(self, cloud: Cloud, store: Store | None = None):
        self.cloud, self.store = cloud, store or Store.of(cloud)
        self.lock = threading.Lock()              # one placement decision at a time
        self.launcher = ThreadPoolExecutor(8)
        self._digests: dict[tuple, str] = {}

    # scheduling ---------------------------------------------------------------------------
    def _place(self, count: int, memory: int) -> list[tuple[str, str]]:
        """(VMM, address) for up to `count` guests: the VMM with the most free memory first."""
        alive = [i for i in self.store.instances() if i["state"] in HOLDING]
        free = {v.host: v.memory_mb for v in self.cloud.vmms}
        for i in alive:
            free[i["vmm"]] = free.get(i["vmm"], 0) - i["memory_mb"]
        used = {i["ip"] for i in alive}
        addresses = [a for a in self.cloud.addresses() if a not in used]
        out = []
        for address in addresses[:count]:
            host = max(free, key=lambda h: (free[h], h))
            if free[host] < memory:
                break
            free[host] -= memory
            out.append((host, address))
        return out

    def run_instances(self, p: dict) -> dict:
        image = p.get("ImageId") or ""
        if not image:
            raise EC2Error("MissingParameter", "The request must contain the parameter ImageId")
        images = self.images()
        if image not in images:
            raise EC2Error("InvalidAMIID.NotFound", f"The image id '[{image}]' does not exist")
        itype = p.get("InstanceType", "m1.small")
        if itype not in INSTANCE_TYPES:
            raise EC2Error("InvalidParameterValue", f"Invalid value '{itype}' for InstanceType: use one of "
                           + ", ".join(INSTANCE_TYPES))
        try:
            low, high = int(p.get("MinCount", "1")), int(p.get("MaxCount", p.get("MinCount", "1")))
        except ValueError:
            raise EC2Error("InvalidParameterValue", "MinCount and MaxCount must be integers") from None
        if not 1 <= low <= high:
            raise EC2Error("InvalidParameterValue", "need 1 <= MinCount <= MaxCount")
        tags = ec2.tags(p)
        mode = tags.get("propagation", self.cloud.propagation)
        if mode not in PROPAGATION_MODES:
            raise EC2Error("InvalidParameterValue", f"unknown propagation {mode!r}: use one of "
                           + ", ".join(PROPAGATION_MODES))
        try:
            self.cloud.shared(tags.get("share", ""))
        except ValueError as e:
            raise EC2Error("InvalidParameterValue", str(e)) from None
        try:
            user_data = base64.b64decode(p.get("UserData", ""), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise EC2Error("InvalidParameterValue", "UserData must be base64-encoded text") from None
        key_name = p.get("KeyName")
        key = self.store.record("keys", key_name) if key_name is not None else None
        if key_name is not None and key is None:
            raise EC2Error("InvalidKeyPair.NotFound", f"The key pair '{key_name}' does not exist")
        ec2.dry_run(p)
        memory, requested = INSTANCE_TYPES[itype], time.time()
        with self.lock:
            slots = self._place(high, memory)
            if len(slots) < low:
                raise EC2Error("InsufficientInstanceCapacity",
                               f"There is not enough capacity for {low} {itype} instance(s): {len(slots)} fit now, "
                               f"{self.cloud.capacity(memory)} on the empty cloud")
            reservation = ec2.new_id("r")
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            instances = [{"id": ec2.new_id("i"), "image": image, "type": itype, "memory_mb": memory, "state": "pending",
                          "requested_at": requested,
                          "vmm": host, "ip": ip, "name": guest_name(ip, self.cloud.site), "reservation": reservation,
                          "ctx": reservation, "launch_index": n, "launch_time": now, "zone": self.cloud.site,
                          "role": tags.get("role", "node"), "propagation": mode, "tags": tags,
                          "key_name": key_name}
                         for n, (host, ip) in enumerate(slots)]
            self.store.new_context(reservation, [i["id"] for i in instances], user_data,
                                   key["public_key"] if key else "")
            self.store.put(*instances)
        self.launcher.submit(self._launch_or_fail, instances, images[image], mode)
        return {"reservationId": reservation, "ownerId": "g5kdeploy", "groupSet": [],
                "instancesSet": [ec2.instance_xml(i) for i in instances]}

    def _launch_or_fail(self, instances: list[dict], image: Path, mode: str) -> None:
        """_launch, in the launcher's thread: what it raises terminates the instances not yet
        running, with the reason, instead of vanishing in the thread."""
        try:
            self._launch(instances, image, mode)
        except Exception as e:
            log.exception("launch failed")
            for i in instances:
                if (now := self.store.get(i["id"])) and now["state"] == "pending":
                    self._terminate(now, f"launch failed: {type(e).__name__}: {e}")

    def _launch(self, instances: list[dict], image: Path, mode: str) -> None:
        """Propagate; each guest starts as soon as its VMM has a checked copy. Each instance
        records its timeline (epoch s): propagation_started_at, propagated_at (its VMM's copy
        checked), started_at (QEMU running; volume_s of it creating the disk), and later
        contextualized_at (the broker)."""
        key, tag = self.cloud.ssh_key, instances[0]["reservation"]
        placement = {i["id"]: i["vmm"] for i in instances}
        disks = propagation.disks(mode, image.stem, placement, tag)
        started, ready = time.time(), []

        def boot(i: dict) -> None:
            args = ["--id", i["id"], "--ip", f"{i['ip']}/{self.cloud.prefix}", "--gateway", self.cloud.gateway,
                    "--name", i["name"], "--broker", self.cloud.broker, "--ctx", i["ctx"],
                    "--memory", str(i["memory_mb"]), "--cpus", str(INSTANCE_CPUS.get(i["type"], 1)),
                    "--bridge", self.cloud.bridge, *disks[i["id"]],
                    *(x for p in self.cloud.shared(i["tags"].get("share", "")) for x in ("--share", p))]
            try:
                out = json.loads(self._vmm(i, "start", *args))
            except Exception as e:
                self._terminate(i, f"start failed: {e}")
                return
            if self.store.get(i["id"])["state"] not in ALIVE:       # terminated while launching
                self._stop_vm(i)
            else:
                self.store.update(i["id"], started_at=time.time(), volume_s=out["volume_s"])

        with ThreadPoolExecutor(16) as starter:
            def delivered(d: propagation.Delivery) -> None:
                for i in (i for i in instances if i["vmm"] == d.host):
                    self.store.update(i["id"], propagation_started_at=started, propagated_at=d.end,
                                      propagation_bytes=d.bytes, cache=d.cache)
                    if d.ok:
                        ready.append(i)
                        starter.submit(boot, i)
                    else:
                        self.store.update(i["id"], state="terminated", error=f"propagation to {d.host} failed: {d.error}")
            try:
                propagation.propagate(self.cloud, mode, str(image), image.stem, self.digest(image), placement, tag,
                                      delivered)
            except Exception as e:  # the instances not yet started carry the failure
                log.exception("propagation failed")
                for i in instances:
                    if i not in ready:
                        self.store.update(i["id"], state="terminated", error=f"propagation failed: {e}")
        propagation.cleanup(key, mode, placement, tag)
        self._watch(ready, time.monotonic() + self.cloud.context_timeout_s)

    def _watch(self, instances: list[dict], deadline: float) -> None:
        """Guests still not contextualized at the deadline are stopped: they show as
        terminated with the reason, instead of pending forever."""
        ids = [i["id"] for i in instances]
        while (pending := [i for i in map(self.store.get, ids) if i["state"] == "pending"]) and \
                time.monotonic() < deadline:
            time.sleep(1)
        for i in pending:
            console = ssh.run(self.cloud.ssh_key, i["vmm"],
                              f"tail -c 200 {shlex.quote(str(VMS / i['id'] / 'serial.log'))} || true")
            self._terminate(i, f"not contextualized after {self.cloud.context_timeout_s} s; "
                               f"console ends with: {console.strip()!r}")

    def _vmm(self, i: dict, *argv: str) -> str:
        """Run the VMM agent of instance i's VMM with these arguments (each one word there)."""
        return ssh.run(self.cloud.ssh_key, i["vmm"], f"{VMM} {shlex.join(argv)}")

    def _stop_vm(self, i: dict) -> None:
        self._vmm(i, "stop", i["id"])

    def _terminate(self, i: dict, error: str = "") -> None:
        """shutting-down, its QEMU and volume gone on the VMM, then terminated."""
        self.store.update(i["id"], state="shutting-down")
        self._stop_vm(i)
        self.store.update(i["id"], state="terminated", **({"error": error} if error else {}))

    # instances ----------------------------------------------------------------------------
    def _selected(self, p: dict) -> list[dict]:
        wanted = ec2.members(p, "InstanceId")
        if malformed := [i for i in wanted if not ec2.well_formed(i)]:
            raise EC2Error("InvalidInstanceID.Malformed", f"Invalid id: {', '.join(map(repr, malformed))}")
        known = {i["id"]: i for i in self.store.instances() if ec2.well_formed(i["id"])}    # none planted
        if unknown := [i for i in wanted if i not in known]:
            raise EC2Error("InvalidInstanceID.NotFound", f"The instance ID '{', '.join(unknown)}' does not exist")
        return [known[i] for i in wanted] if wanted else sorted(known.values(), key=lambda i: i["launch_time"])

    def _filtered(self, p: dict, known: set[str] = INSTANCE_FILTERS) -> list[dict]:
        """The instances a request names (all if none) that pass its filters (MaxResults, for
        the caller's pages, cannot go with instance ids, as in EC2)."""
        if "MaxResults" in p and ec2.members(p, "InstanceId"):
            raise EC2Error("InvalidParameterCombination", "The parameter instancesSet cannot be used with "
                                                          "the parameter maxResults")
        chosen = ec2.filters(p, known)
        return [i for i in self._selected(p) if ec2.selected(instance_fields(i), i.get("tags", {}), chosen)]

    def describe_instances(self, p: dict) -> dict:
        instances, more = ec2.page(self._filtered(p), p)
        reservations: dict[str, list[dict]] = {}
        for i in instances:
            reservations.setdefault(i["reservation"], []).append(i)
        return {"reservationSet": [{"reservationId": r, "ownerId": "g5kdeploy", "groupSet": [],
                                    "instancesSet": [ec2.instance_xml(i) for i in sorted(v, key=lambda i: i["launch_index"])]}
                                   for r, v in reservations.items()], "nextToken": more}

    def describe_instance_status(self, p: dict) -> dict:
        every = p.get("IncludeAllInstances") == "true"         # else running instances only, as EC2
        out = []
        for i in self._filtered(p, STATUS_FILTERS | {"instance-id"}):
            if not every and i["state"] != "running":
                continue
            status = {"running": "ok", "pending": "initializing"}.get(i["state"], "not-applicable")
            summary = {"status": status, "details": [{"name": "reachability", "status": {
                "ok": "passed", "initializing": "initializing"}.get(status, "not-applicable")}]}
            out.append({"instanceId": i["id"], "availabilityZone": i["zone"],
                        "instanceState": {"code": ec2.STATE_CODES[i["state"]], "name": i["state"]},
                        "instanceStatus": summary, "systemStatus": summary})
        page, more = ec2.page(out, p)
        return {"instanceStatusSet": page, "nextToken": more}

    def _changed(self, p: dict, change, allowed: tuple[str, ...]) -> dict:
        """Apply `change(instance)` to each named instance (in parallel); the state changes
        as EC2 reports them. An instance in none of the `allowed` states is refused first."""
        if not ec2.members(p, "InstanceId"):
            raise EC2Error("MissingParameter", "The request must contain the parameter InstanceId")
        chosen = self._selected(p)
        if wrong := [i for i in chosen if i["state"] not in allowed]:
            raise EC2Error("IncorrectInstanceState", f"The instance '{wrong[0]['id']}' is in state "
                           f"'{wrong[0]['state']}', not {' or '.join(allowed)}")
        ec2.dry_run(p)

        def one(i: dict) -> dict:
            before = i["state"]
            change(i)
            now = self.store.get(i["id"])["state"]
            return {"instanceId": i["id"], "previousState": {"code": ec2.STATE_CODES[before], "name": before},
                    "currentState": {"code": ec2.STATE_CODES[now], "name": now}}
        return {"instancesSet": ssh.each(one, chosen)}

    # StopInstances and StartInstances: (from, through, the VMM's control, to, reason); an
    # instance already where it is asked to go is left as it is
    MOVES = {"stop": ("running", "stopping", "pause", "stopped", "User initiated"),
             "start": ("stopped", "pending", "resume", "running", "")}

    def _move(self, p: dict, move: str) -> dict:
        start, through, control, end, reason = self.MOVES[move]

        def one(i: dict) -> None:
            if i["state"] == start:
                self.store.update(i["id"], state=through)
                self._vmm(i, "control", i["id"], control)
                self.store.update(i["id"], state=end, reason=reason)
        return self._changed(p, one, ("running", "stopped"))

    def stop_instances(self, p: dict) -> dict:
        return self._move(p, "stop")

    def start_instances(self, p: dict) -> dict:
        return self._move(p, "start")

    def reboot_instances(self, p: dict) -> dict:
        self._changed(p, lambda i: self._vmm(i, "control", i["id"], "reset"), ("running",))
        return {"return": True}

    def terminate_instances(self, p: dict) -> dict:
        return self._changed(p, lambda i: i["state"] != "terminated" and self._terminate(i), tuple(ec2.STATE_CODES))

    # regions and zones --------------------------------------------------------------------
    def describe_regions(self, p: dict) -> dict:
        regions = self.cloud.regions or {self.cloud.site: ""}
        wanted = ec2.members(p, "RegionName") or sorted(regions)
        if unknown := [r for r in wanted if r not in regions]:
            raise EC2Error("InvalidParameterValue", f"Invalid region: {unknown[0]} (regions: {', '.join(regions)})")
        chosen = ec2.filters(p, {"region-name", "endpoint", "opt-in-status"})
        return {"regionInfo": [{"regionName": r, "regionEndpoint": regions[r], "optInStatus": "opt-in-not-required"}
                               for r in wanted if ec2.selected({"region-name": [r], "endpoint": [regions[r]],
                                                                "opt-in-status": ["opt-in-not-required"]}, {}, chosen)]}

    def describe_availability_zones(self, p: dict) -> dict:
        site = self.cloud.site
        zone = {"zoneName": site, "zoneId": f"{site}-az1", "zoneState": "available", "regionName": site,
                "optInStatus": "opt-in-not-required", "groupName": site, "networkBorderGroup": site,
                "zoneType": "availability-zone", "messageSet": []}
        names, ids = ec2.members(p, "ZoneName"), ec2.members(p, "ZoneId")
        if unknown := [z for z in names if z != site] + [z for z in ids if z != zone["zoneId"]]:
            raise EC2Error("InvalidParameterValue", f"Invalid availability zone: [{unknown[0]}] (this cloud's: {site})")
        fields = {"zone-name": [site], "zone-id": [zone["zoneId"]], "region-name": [site], "state": ["available"],
                  "zone-type": ["availability-zone"], "group-name": [site]}
        chosen = ec2.filters(p, set(fields))
        return {"availabilityZoneInfo": [zone] if ec2.selected(fields, {}, chosen) else []}

    ACTIONS = {"RunInstances": run_instances, "DescribeInstances": describe_instances,
               "TerminateInstances": terminate_instances, "DescribeInstanceStatus": describe_instance_status,
               "StopInstances": stop_instances, "StartInstances": start_instances,
               "RebootInstances": reboot_instances, "DescribeRegions": describe_regions,
               "DescribeAvailabilityZones": describe_availability_zones,
               **ImageActions.ACTIONS, **KeyPairActions.ACTIONS, **TagActions.ACTIONS}

    def handle(self, method: str, path: str, query: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        try:
            try:
                signature.verify(method, path, query, headers, body, self.cloud.credentials, self.cloud.site)
            except signature.SignatureError as e:
                raise EC2Error("AuthFailure", str(e), 401) from None
            params = ec2.parse_params(body, query)
            action = params.get("Action", "")
            if action not in self.ACTIONS:
                raise EC2Error("InvalidAction", f"The action {action or '(none)'} is not valid for this web service")
            return 200, ec2.response(action, self.ACTIONS[action](self, params))
        except EC2Error as e:
            return e.status, ec2.error(e)
        except redis.RedisError as e:       # the cloud's state cannot be read: retry later, as EC2 says
            log.warning("Redis: %s", e)
            return 503, ec2.error(EC2Error("Unavailable", f"the cloud's state is unavailable ({type(e).__name__}): "
                                                          "retry", 503))
        except Exception as e:  # reported to the client as EC2 does
            log.exception("internal error")
            return 500, ec2.error(EC2Error("InternalError", f"{type(e).__name__}: {e}", 500))


def instance_fields(i: dict) -> dict[str, list[str]]:
    """An instance's value of each filter name (INSTANCE_FILTERS and STATUS_FILTERS)."""
    status = {"running": "ok", "pending": "initializing"}.get(i["state"], "not-applicable")
    return {"instance-state-name": [i["state"]], "instance-state-code": [str(ec2.STATE_CODES[i["state"]])],
            "instance-id": [i["id"]], "image-id": [i["image"]], "instance-type": [i["type"]],
            "private-ip-address": [i["ip"]], "ip-address": [i["ip"]], "availability-zone": [i["zone"]],
            "reservation-id": [i["reservation"]], "key-name": [i["key_name"]] if i.get("key_name") else [],
            "launch-index": [str(i.get("launch_index", 0))], "private-dns-name": [i.get("name", "")],
            "dns-name": [i.get("name", "")], "instance-status.status": [status], "system-status.status": [status]}


def serve(service: Service, port: int) -> ThreadingHTTPServer:
    def answer(method, path, query, headers, body):
        status, out = service.handle(method, path, query, headers, body)
        return status, "text/xml", out
    return web.serve(answer, port, log)


if __name__ == "__main__":
    web.main(lambda cloud: serve(Service(cloud), cloud.api_port))
