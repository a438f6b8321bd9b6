"""Job flows: what a RunJobFlow asked for, and the thread that carries it out through its
states as EMR does (cluster STARTING -> BOOTSTRAPPING -> RUNNING <-> WAITING -> TERMINATING
-> TERMINATED | TERMINATED_WITH_ERRORS; step PENDING -> RUNNING -> COMPLETED | FAILED |
CANCELLED). Instances come from the clouds' EC2 APIs (RunInstances, as any user); the
engine of an instance (a Spark worker; the master's Spark master) is started over ssh with
one script per node (g5kdeploy.resilin.spark), bootstrap actions first; steps run one at a
time on the master (g5kdeploy.resilin.step). Instance groups may be on different clouds of
the federation (instance type `m1.small@nancy`: the thesis's multi-cloud job flows); their
workers join the master over the WAN.

Where an instance's engine runs (its VMM host, or inside it) is the job flow's placement
(g5kdeploy.resilin.placement)."""
from __future__ import annotations

import itertools
import json
import logging
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from g5kdeploy import chef
from g5kdeploy.resilin import spark

log = logging.getLogger("resilin")
RUNNING_TIMEOUT_S = 600               # an instance not running by then fails its group
ALIVE = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
ENDED = ("TERMINATED", "TERMINATED_WITH_ERRORS")
# what every job flow runs (applications map to it): the Spark the nimbus-vmm role installs
ENGINE = {"Name": "Spark", "Version": chef.role("nimbus-vmm")["default_attributes"]["g5kdeploy"]["pyspark"]}
MASTER_PORTS = range(7100, 7900)                     # one per job flow, reused round-robin


def new_id(prefix: str, width: int = 13) -> str:
    return prefix + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(width))


@dataclass
class Instance:
    id: str
    group: str
    cloud: str
    ec2_id: str = ""
    state: str = "PROVISIONING"
    address: str = ""                 # the instance's own
    host: str = ""                    # where its engine runs (its VMM, with placement vmm)
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None
    reason: str = ""


@dataclass
class Group:
    id: str
    role: str                         # MASTER, CORE, TASK
    type: str                         # the cloud's instance type
    cloud: str
    requested: int
    name: str = ""
    state: str = "PROVISIONING"
    created: float = field(default_factory=time.time)
    ready: float | None = None
    ended: float | None = None
    reason: str = ""


@dataclass
class Step:
    id: str
    name: str
    action: str
    jar: str
    args: list[str]
    main_class: str = ""
    properties: dict = field(default_factory=dict)
    state: str = "PENDING"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    failure: str = ""


@dataclass
class Flow:
    id: str
    name: str
    cloud: str                        # the default cloud: the one whose credentials signed RunJobFlow
    keep_alive: bool
    protected: bool
    log_uri: str = ""
    release_label: str = ""
    applications: list[dict] = field(default_factory=list)
    bootstrap: list[tuple[str, str, list[str]]] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    state: str = "STARTING"
    reason_code: str = ""
    reason: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None      # every first instance running
    ready: float | None = None        # the engine up: steps may run
    ended: float | None = None
    key_name: str = ""
    placement: object = None          # placement.OnVmm or InGuest: where its instances' engines run
    secret: str = field(default_factory=lambda: secrets.token_hex(24))
    port: int = 7100
    wakeup: threading.Event = field(default_factory=threading.Event)     # a step added, or the end

    def group(self, gid: str) -> Group | None:
        return next((g for g in self.groups if g.id == gid), None)

    @property
    def master(self) -> Instance | None:
        return next((i for i in self.instances if self.group(i.group).role == "MASTER"), None)

    def members(self, group: Group, alive: bool = True) -> list[Instance]:
        return [i for i in self.instances if i.group == group.id and (not alive or i.state != "TERMINATED")]


class Clouds:
    """The federation's clouds as a user reaches them: site -> entry of the clouds file;
    Resilin's own key pair in each (made when first needed, deleted by `forget_keys`).
    `owner` names this service in what it makes (tag `resilin:owner`, key pair names), so
    that a later run of it can reap what a killed one left (`Runner.reap`)."""

    def __init__(self, entries: dict[str, dict], keys: Path | None = None, owner: str | None = None):
        self.entries, self.keys = entries, keys
        self.owner = owner or secrets.token_hex(4)
        self._clients: dict[str, object] = {}
        self._pairs: dict[str, tuple[str, Path]] = {}
        self._lock = threading.Lock()

    def key_pair(self, site: str) -> tuple[str, Path]:
        """(name, private key file) of Resilin's key pair in a cloud."""
        with self._lock:
            if site not in self._pairs:
                from g5kdeploy.files import write_atomic
                name = f"{self.key_prefix}{secrets.token_hex(4)}"
                made = self._client(site).create_key_pair(KeyName=name, KeyType="ed25519")
                path = (self.keys or Path(tempfile.mkdtemp(prefix="resilin-keys-"))) / f"{site}.pem"
                write_atomic(path, made["KeyMaterial"], 0o600)
                self._pairs[site] = (name, path)
            return self._pairs[site]

    @property
    def key_prefix(self) -> str:
        return f"resilin-{self.owner}-"

    def forget_keys(self) -> None:
        for site, (name, path) in list(self._pairs.items()):
            try:
                self._client(site).delete_key_pair(KeyName=name)
            except Exception as e:
                log.warning("key pair %s of %s not deleted: %s", name, site, e)
            path.unlink(missing_ok=True)
            if self.keys is None:            # its own temporary directory
                path.parent.rmdir()
            self._pairs.pop(site)

    def ec2(self, site: str):
        with self._lock:
            return self._client(site)

    def _client(self, site: str):
        """The cloud's boto3 EC2 client (one per cloud; under the lock)."""
        import boto3
        if site not in self._clients:
            c = self.entries[site]
            self._clients[site] = boto3.client("ec2", endpoint_url=c["endpoint"], region_name=c["region"],
                                               aws_access_key_id=c["access_key"], aws_secret_access_key=c["secret_key"])
        return self._clients[site]

    def storage(self, site: str) -> dict:
        """s3.json of a cluster whose data lives in this cloud's Cumulus."""
        c = self.entries[site]
        return {"endpoint": c["s3_endpoint"], "region": c["region"], "access_key": c["access_key"],
                "secret_key": c["secret_key"]}


class Runner:
    """Carries job flows out, one thread each; resizes in a pool beside them."""

    def __init__(self, clouds: Clouds):
        self.clouds, self.flows, self.lock = clouds, {}, threading.RLock()
        self.pool = ThreadPoolExecutor(16)
        self._ports = itertools.cycle(MASTER_PORTS)

    # the flow's thread --------------------------------------------------------------------
    def start(self, flow: Flow) -> None:
        with self.lock:
            flow.port = next(self._ports)
            self.flows[flow.id] = flow
        threading.Thread(target=self._run, args=(flow,), name=flow.id, daemon=True).start()

    def _run(self, flow: Flow) -> None:
        try:
            self._provision(flow, flow.groups)
            flow.started = time.time()
            self._set(flow, "BOOTSTRAPPING")
            self._engine(flow, [flow.master])
            self._engine(flow, [i for i in flow.instances if i is not flow.master])
            flow.ready = time.time()
            for g in flow.groups:
                g.state, g.ready = "RUNNING", flow.ready
            self._steps(flow)
        except Exception as e:               # provisioning, bootstrap or engine failure
            if flow.state not in ALIVE:      # ended meanwhile (TerminateJobFlows): that is why
                return
            log.exception("job flow %s failed", flow.id)
            code = "BOOTSTRAP_FAILURE" if flow.state == "BOOTSTRAPPING" else "INSTANCE_FAILURE"
            self._end(flow, code, str(e), errors=True)

    def _set(self, flow: Flow, state: str) -> None:
        with self.lock:
            if flow.state in ALIVE:
                flow.state = state

    def _steps(self, flow: Flow) -> None:
        while flow.state in ALIVE:
            with self.lock:
                step = next((s for s in flow.steps if s.state == "PENDING"), None)
                if step is None:
                    if not flow.keep_alive:
                        break
                    flow.state = "WAITING"
                else:
                    flow.state, step.state, step.started = "RUNNING", "RUNNING", time.time()
            if step is None:
                flow.wakeup.wait(0.5)          # set by AddJobFlowSteps and by the end
                flow.wakeup.clear()
                continue
            ok, message = self._run_step(flow, step)
            with self.lock:
                step.ended = time.time()
                if step.state == "CANCEL_PENDING" or flow.state not in ALIVE:
                    step.state = "CANCELLED"
                elif step.state == "RUNNING":
                    step.state, step.failure = ("COMPLETED", "") if ok else ("FAILED", message)
                if step.state == "FAILED" and step.action in ("TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER",
                                                               "CANCEL_AND_WAIT"):
                    for s in flow.steps:
                        if s.state == "PENDING":
                            s.state, s.ended = "CANCELLED", time.time()
                    if step.action != "CANCEL_AND_WAIT" and not flow.protected:
                        return self._end(flow, "STEP_FAILURE", f"Step {step.id} failed: {message}", errors=True)
        if flow.state in ALIVE:
            self._end(flow, "ALL_STEPS_COMPLETED", "Steps completed")

    def wake(self, flow: Flow) -> None:
        flow.wakeup.set()

    # provisioning -------------------------------------------------------------------------
    def _provision(self, flow: Flow, groups: list[Group], counts: dict[str, int] | None = None) -> list[Instance]:
        """RunInstances for each group (its count, or counts[group id] more), until running."""
        new = []
        for g in groups:
            k = (counts or {}).get(g.id, g.requested)
            if k <= 0:
                continue
            tags = [{"Key": "resilin:owner", "Value": self.clouds.owner}, {"Key": "resilin:job-flow", "Value": flow.id},
                    {"Key": "resilin:group", "Value": g.id}]
            key = flow.placement.key_name(g.cloud)
            r = self.clouds.ec2(g.cloud).run_instances(
                ImageId=flow.placement.image, InstanceType=g.type, MinCount=k, MaxCount=k,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}], **({"KeyName": key} if key else {}))
            made = [Instance(new_id("ci-"), g.id, g.cloud, ec2_id=i["InstanceId"]) for i in r["Instances"]]
            with self.lock:
                flow.instances += made
                ended = flow.state not in ALIVE
            new += made
            if ended:                     # terminated while we asked: nothing may be left
                self._release(flow, made)
                raise RuntimeError("the job flow ended while its instances were asked for")
        deadline = time.monotonic() + RUNNING_TIMEOUT_S
        waiting = list(new)
        while waiting:
            for cloud in {i.cloud for i in waiting}:
                mine = [i for i in waiting if i.cloud == cloud]
                seen = {x["InstanceId"]: x for r in self.clouds.ec2(cloud).describe_instances(
                    InstanceIds=[i.ec2_id for i in mine])["Reservations"] for x in r["Instances"]}
                for i in mine:
                    x = seen.get(i.ec2_id, {})
                    state = x.get("State", {}).get("Name", "missing")
                    if state == "running":
                        i.address, i.host = x["PrivateIpAddress"], x["Placement"]["HostId"]
                        i.state = "BOOTSTRAPPING"
                        waiting.remove(i)
                    elif state not in ("pending",):
                        why = (x.get("StateReason") or {}).get("Message", state)
                        raise RuntimeError(f"instance {i.ec2_id} on {cloud} is {state}: {why}")
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting)} instance(s) not running after {RUNNING_TIMEOUT_S} s")
            if waiting:
                time.sleep(1)
        return new

    # the engine ---------------------------------------------------------------------------
    def _engine(self, flow: Flow, instances: list[Instance]) -> None:
        """Bootstrap actions and the Spark daemon on each instance, in parallel: its files
        (the cluster's secret, the storage credentials) and one script."""
        if not instances:
            return
        master, where_ = flow.master, flow.placement
        master_address = where_.address(master)
        files = {"spark.conf": spark.properties(flow.secret, where_.emulated).encode(),
                 "s3.json": json.dumps(self.clouds.storage(flow.cloud)).encode()}

        def one(i: Instance) -> str:
            where_.prepare(i)
            role = "master" if i is master else "worker"
            ok, err = where_.run(i, spark.node_script(spark.directory(flow.id, i.id), role, where_.address(i),
                                                      master_address, flow.port, 1, flow.bootstrap, where_.user,
                                                      where_.emulated),
                                 files, spark.directory(flow.id, i.id))
            if not ok:
                return f"{i.id} ({i.ec2_id} on {where_.where(i)}): {err[-300:]}"
            i.state, i.ready = "RUNNING", time.time()
            return ""

        def guarded(i: Instance) -> str:
            try:
                return one(i)
            except Exception as e:
                return f"{i.id} ({i.ec2_id}): {e}"
        with ThreadPoolExecutor(8) as each:            # its own pool: this runs in the runner's pool too
            errors = [e for e in each.map(guarded, instances) if e]
        if master in instances and len(flow.instances) == 1 and not errors:     # one node: master and core
            core = spark.directory(flow.id, master.id) + "/core"
            ok, err = where_.run(master, spark.node_script(core, "worker", master_address, master_address, flow.port, 1,
                                                           [], where_.user, where_.emulated), files, core)
            errors += [] if ok else [f"{master.id} (its core worker): {err[-300:]}"]
        if errors:
            raise RuntimeError("; ".join(errors))

    def _run_step(self, flow: Flow, step: Step) -> tuple[bool, str]:
        m = flow.master
        steps = f"{spark.directory(flow.id, m.id)}/steps/{step.id}"
        spec = {"id": step.id, "flow": flow.id, "jar": step.jar, "args": step.args, "main_class": step.main_class,
                "properties": step.properties, "log_uri": flow.log_uri, "cluster_dir": spark.directory(flow.id, m.id),
                "master": f"spark://{flow.placement.address(m)}:{flow.port}", "driver_host": flow.placement.address(m)}
        user = flow.placement.user
        ok, err = flow.placement.run(m, (f"chown -R {user}: {steps} && " if user else "") +
                                     f"cd {steps} && {spark.as_user(user)}env {spark.env(flow.placement.emulated)} "
                                     f"{spark.PYTHON} -m g5kdeploy.resilin.step {steps}/spec.json",
                                     {"spec.json": json.dumps(spec).encode()}, steps)
        return ok, err.splitlines()[-1][-500:] if err else ""

    def cancel_running(self, flow: Flow, step: Step) -> None:
        steps = f"{spark.directory(flow.id, flow.master.id)}/steps/{step.id}"
        flow.placement.run(flow.master, f"test -f {steps}/pid && kill -TERM $(cat {steps}/pid)")

    # resizing and the end -----------------------------------------------------------------
    def grow(self, flow: Flow, group: Group, more: int) -> None:
        """`more` instances in a group of a running flow, joining its engine."""
        def work():
            try:
                group.state = "RESIZING"
                new = self._provision(flow, [group], {group.id: more})
                self._engine(flow, new)
                group.state = "RUNNING"
                group.ready = group.ready or time.time()
            except Exception as e:
                log.exception("resize of %s failed", group.id)
                group.state, group.reason = "RUNNING", f"resize failed: {e}"
        self.pool.submit(work)

    def shrink(self, flow: Flow, instances: list[Instance]) -> None:
        """Stop these instances' engines (Spark re-executes their tasks) and terminate them."""
        def work():
            self._release(flow, instances)
        self.pool.submit(work)

    def _release(self, flow: Flow, instances: list[Instance]) -> None:
        """Stop the instances' engines (their sockets close: Spark sees them go at once),
        then terminate them."""
        if not instances:
            return

        def stop(i: Instance) -> None:
            if i.state in ("RUNNING", "BOOTSTRAPPING") and i.address:
                try:
                    flow.placement.run(i, spark.stop_script(spark.directory(flow.id, i.id)))
                except Exception as e:             # an instance that is gone: terminated all the same
                    log.warning("stopping the engine of %s: %s", i.id, e)
        with ThreadPoolExecutor(8) as each:
            list(each.map(stop, instances))
        for cloud in {i.cloud for i in instances}:
            ids = [i.ec2_id for i in instances if i.cloud == cloud and i.ec2_id]
            if ids:
                try:
                    self.clouds.ec2(cloud).terminate_instances(InstanceIds=ids)
                except Exception as e:           # reported, and the rest still released
                    log.error("terminating %s on %s: %s", ids, cloud, e)
        now = time.time()
        for i in instances:
            i.state, i.ended = "TERMINATED", now

    def terminate(self, flow: Flow) -> None:
        """TerminateJobFlows: the flow's thread ends it (a running step is interrupted)."""
        with self.lock:
            if flow.state not in ALIVE:
                return
            flow.reason_code, flow.reason = "USER_REQUEST", "Terminated by user request"
            running = [s for s in flow.steps if s.state == "RUNNING"]
        for s in running:
            self.pool.submit(self.cancel_running, flow, s)
        self.pool.submit(self._end, flow, "USER_REQUEST", "Terminated by user request")

    def _end(self, flow: Flow, code: str, message: str, errors: bool = False) -> None:
        with self.lock:
            if flow.state in ("TERMINATING", *ENDED):
                return
            flow.state, flow.reason_code, flow.reason = "TERMINATING", code, message
            for s in flow.steps:
                if s.state == "PENDING":
                    s.state, s.ended = "CANCELLED", time.time()
            self.wake(flow)
        try:
            self._release(flow, [i for i in flow.instances if i.state != "TERMINATED"])
        finally:
            now = time.time()
            with self.lock:
                for g in flow.groups:
                    g.state, g.ended = "ENDED", now
                flow.state, flow.ended = ("TERMINATED_WITH_ERRORS" if errors else "TERMINATED"), now

    def reap(self) -> int:
        """What a killed run of this service left (its owner's): the engines on the
        instances' hosts stopped, the instances terminated, its key pairs deleted; how many
        instances that was. Engines inside instances go with them."""
        from g5kdeploy import remote
        owner, reaped = self.clouds.owner, 0
        for site in self.clouds.entries:
            ec2 = self.clouds.ec2(site)
            try:
                left = [x for r in ec2.describe_instances(Filters=[
                    {"Name": "tag:resilin:owner", "Values": [owner]},
                    {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])[
                    "Reservations"] for x in r["Instances"]]
            except Exception as e:              # a cloud that is gone took its instances with it
                log.warning("cannot look for what Resilin left on %s: %s", site, e)
                continue
            hosts: dict[str, set[str]] = {}
            for x in left:
                flow = next((t["Value"] for t in x.get("Tags", []) if t["Key"] == "resilin:job-flow"), None)
                if flow and (host := (x.get("Placement") or {}).get("HostId")):
                    hosts.setdefault(host, set()).add(flow)
            for host, flows in hosts.items():
                r = remote.run("\n".join(spark.stop_script(f"{spark.ROOT}/{f}") for f in sorted(flows)), [host])[0]
                if not r.ok:
                    log.warning("stopping the engines left on %s: %s", host, r.stderr.strip() or r.error)
            if left:
                ec2.terminate_instances(InstanceIds=[x["InstanceId"] for x in left])
                log.info("reaped %d instance(s) of %s left on %s", len(left), owner, site)
            for k in ec2.describe_key_pairs()["KeyPairs"]:
                if k["KeyName"].startswith(self.clouds.key_prefix):
                    ec2.delete_key_pair(KeyName=k["KeyName"])
            reaped += len(left)
        return reaped

    def shutdown(self) -> None:
        """Every job flow still alive ends (the service is stopping), then Resilin's key
        pairs go: nothing is left behind."""
        for flow in list(self.flows.values()):
            if flow.state in ALIVE:
                self._end(flow, "USER_REQUEST", "Resilin is stopping")
        self.clouds.forget_keys()
