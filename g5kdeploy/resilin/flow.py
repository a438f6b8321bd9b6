"""Job flows: what a RunJobFlow asked for, and the thread that carries it out through its
states as EMR does (cluster STARTING -> BOOTSTRAPPING -> RUNNING <-> WAITING -> TERMINATING
-> TERMINATED | TERMINATED_WITH_ERRORS; step PENDING -> RUNNING -> COMPLETED | FAILED |
CANCELLED). Instances come from the clouds' EC2 APIs (RunInstances, as any user); the
engine of an instance (a Spark worker; the master's Spark master) is started over ssh with
one script per node (g5kdeploy.resilin.spark), bootstrap actions first; steps run one at a
time on the master (g5kdeploy.resilin.step). Instance groups may be on different clouds of
the federation (instance type `m1.small@nancy`: the thesis's multi-cloud job flows); their
workers join the master over the WAN.

Where an instance's engine runs is the placement: `vmm` runs it on the VMM host of the
instance (EC2's Placement.HostId), with the instance's core: under TCG a JVM in a guest is
~8x slower than on its host (benchmarks/README). `instance` (inside the guests, as the
thesis did: KVM on Grid'5000) is not built yet."""
from __future__ import annotations

import json
import logging
import secrets
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from g5kdeploy import remote
from g5kdeploy.resilin import spark

log = logging.getLogger("resilin")
IMAGE = "tiny"                        # what instances boot with placement vmm (they hold the cores)
RUNNING_TIMEOUT_S = 600               # an instance not running by then fails its group
ALIVE = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
ENDED = ("TERMINATED", "TERMINATED_WITH_ERRORS")
STEP_DONE = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")
ENGINE = {"Name": "Spark", "Version": "4.3.0"}       # what every job flow runs (applications map to it)
MASTER_PORTS = range(7100, 7900)


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
    """The federation's clouds as a user reaches them: site -> entry of the clouds file."""

    def __init__(self, entries: dict[str, dict]):
        self.entries = entries
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def ec2(self, site: str):
        import boto3
        with self._lock:
            if site not in self._clients:
                c = self.entries[site]
                self._clients[site] = boto3.client("ec2", endpoint_url=c["endpoint"], region_name=c["region"],
                                                   aws_access_key_id=c["access_key"],
                                                   aws_secret_access_key=c["secret_key"])
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
        self._ports = iter(MASTER_PORTS)

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
            tags = [{"Key": "resilin:job-flow", "Value": flow.id}, {"Key": "resilin:group", "Value": g.id}]
            r = self.clouds.ec2(g.cloud).run_instances(
                ImageId=IMAGE, InstanceType=g.type, MinCount=k, MaxCount=k,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
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
        """Bootstrap actions and the Spark daemon on each instance (in parallel): one file
        copy (its secrets) and one script per node."""
        if not instances:
            return
        master = flow.master
        master_address = socket.gethostbyname(master.host)
        with tempfile.TemporaryDirectory(prefix="resilin-") as tmp:
            files = []
            for i in instances:
                conf, s3 = Path(tmp) / f"resilin-{i.id}.spark.conf", Path(tmp) / f"resilin-{i.id}.s3.json"
                conf.write_text(spark.properties(flow.secret))
                s3.write_text(json.dumps(self.clouds.storage(flow.cloud)))
                conf.chmod(0o600)
                s3.chmod(0o600)
                files.append((i, conf, s3))
            sent = {r.host: r for f in files for r in remote.put([f[1], f[2]], [f[0].host], ".")}
        bad = [f"{h}: {r.error or r.stderr.strip()[-200:]}" for h, r in sent.items() if not r.ok]
        if bad:
            raise RuntimeError("cannot copy the cluster's configuration to " + "; ".join(bad))

        def one(i: Instance) -> str:
            where = spark.directory(flow.id, i.id)
            role = "master" if i is master else "worker"
            address = master_address if i is master else socket.gethostbyname(i.host)
            script = (f"install -d -m 700 {where} && mv resilin-{i.id}.spark.conf {where}/spark.conf && "
                      f"mv resilin-{i.id}.s3.json {where}/s3.json\n"
                      + spark.node_script(where, role, address, master_address, flow.port, 1, flow.bootstrap))
            r = remote.run(script, [i.host])[0]
            if not r.ok:
                return f"{i.id} ({i.ec2_id} on {i.host}): {r.stderr.strip()[-300:] or r.error}"
            i.state, i.ready = "RUNNING", time.time()
            return ""
        errors = [e for e in self.pool.map(one, instances) if e]
        if master in instances and len(flow.instances) == 1:     # one node: it is master and core
            errors += [e for e in [self._single_worker(flow)] if e]
        if errors:
            raise RuntimeError("; ".join(errors))

    def _single_worker(self, flow: Flow) -> str:
        m = flow.master
        where = spark.directory(flow.id, m.id) + "/core"
        address = socket.gethostbyname(m.host)
        script = (f"install -d -m 700 {where} && cp {spark.directory(flow.id, m.id)}/spark.conf {where}/ && "
                  + spark.node_script(where, "worker", address, address, flow.port, 1, []))
        r = remote.run(script, [m.host])[0]
        return "" if r.ok else f"{m.id} (its core worker): {r.stderr.strip()[-300:]}"

    def _run_step(self, flow: Flow, step: Step) -> tuple[bool, str]:
        m = flow.master
        where = spark.directory(flow.id, m.id)
        spec = {"id": step.id, "flow": flow.id, "jar": step.jar, "args": step.args, "main_class": step.main_class,
                "properties": step.properties, "log_uri": flow.log_uri, "cluster_dir": where,
                "master": f"spark://{socket.gethostbyname(m.host)}:{flow.port}"}
        with tempfile.TemporaryDirectory(prefix="resilin-") as tmp:
            f = Path(tmp) / f"resilin-{step.id}.json"
            f.write_text(json.dumps(spec))
            sent = remote.put([f], [m.host], ".")[0]
        if not sent.ok:
            return False, f"cannot send the step to the master: {sent.error}"
        steps = f"{where}/steps/{step.id}"
        r = remote.run(f"install -d -m 700 {steps} && mv resilin-{step.id}.json {steps}/spec.json && cd {steps} && "
                       f"env {spark.ENV} {spark.PYTHON} -m g5kdeploy.resilin.step {steps}/spec.json", [m.host])[0]
        return r.ok, (r.stderr.strip().splitlines() or [r.error or f"exit {r.exit_code}"])[-1][-500:]

    def cancel_running(self, flow: Flow, step: Step) -> None:
        steps = f"{spark.directory(flow.id, flow.master.id)}/steps/{step.id}"
        remote.run(f"test -f {steps}/pid && kill -TERM $(cat {steps}/pid)", [flow.master.host])

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
        if not instances:
            return
        for host in {i.host for i in instances if i.host}:
            remote.run("; ".join(spark.stop_script(spark.directory(flow.id, i.id)) for i in instances
                                 if i.host == host), [host])
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

    def shutdown(self) -> None:
        """Every job flow still alive ends (the service is stopping): nothing is left behind."""
        for flow in list(self.flows.values()):
            if flow.state in ALIVE:
                self._end(flow, "USER_REQUEST", "Resilin is stopping")
