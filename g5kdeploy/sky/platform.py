"""A sky-computing platform (thesis §3.3–3.4): a Dask scheduler and the job's client on
the master, and workers on every site that join it over the WAN. Either all on reserved
nodes (the master a node of the first site; the protein database broadcast to the workers'
nodes along a chain), or all on instances asked from the sites' clouds through their EC2
APIs (the master one of them; each instance given the platform's payload over ssh), across
firewalls and NAT through ViNe when the sites need it. The job is followed from the
frontend while it runs (to extend the platform or lose a worker at a given fraction of the
tasks done)."""
from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from g5kdeploy import NODE_SOURCE, chef, on_node, remote
from g5kdeploy.files import write_atomic
from g5kdeploy.progress import parallel
from g5kdeploy.sky.data import DB_NAME
from g5kdeploy.testbed.model import Node

ROOT = "/var/lib/g5kdeploy-sky"           # on every node of the platform (the sky-node role makes it)
DB = f"{ROOT}/db/{DB_NAME}"
QUERIES = f"{ROOT}/queries.fasta"
PORT = 8786
TLS = f"{ROOT}/tls"                       # the platform's certificate and key (mutual TLS, root only)
TLS_FLAGS = f"--tls-ca-file {TLS}/cert.pem --tls-cert {TLS}/cert.pem --tls-key {TLS}/key.pem"
# Dask's own monitors (the event-loop tick every 20 ms, the worker's profiler every 10 ms, the
# system and memory monitors) take an idle scheduler and worker under TCG 84 % of the guest's one
# core, and blastx's share with it; 17 % with these (measured in a debian-blast instance)
DASK_QUIET = ("env DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL=5s "
              "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL=1s ")
BLAST, JOB = on_node("g5kdeploy.sky.blast"), DASK_QUIET + on_node("g5kdeploy.sky.job")
SCHEDULER = DASK_QUIET + on_node("distributed.cli.dask_scheduler")
WORKER = DASK_QUIET + on_node("distributed.cli.dask_worker")


def configure(nodes: list[Node], logdir: Path | None = None) -> None:
    """Converge the sky-node role (Dask, BLAST+, the g5kdeploy sources) on every node."""
    chef.apply_all({n: ("sky-node", {"g5kdeploy": {"sky_root": ROOT}}) for n in nodes}, logdir=logdir)


def _certificate(into: Path) -> None:
    """A fresh self-signed certificate and key (cert.pem, key.pem) in `into`."""
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                           "-nodes", "-days", "30", "-subj", "/CN=g5kdeploy-sky", "-keyout", f"{into}/key.pem",
                           "-out", f"{into}/cert.pem"], capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"openssl: {made.stderr.strip()[-300:]}")
    os.chmod(f"{into}/key.pem", 0o600)


def credentials(nodes: list[Node]) -> None:
    """A fresh self-signed certificate and key for this platform, on every node of it: the
    scheduler, workers and client accept only peers that hold them (Dask's mutual TLS), so
    nobody else who reaches the scheduler can submit code to the workers."""
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-tls-") as tmp:
        _certificate(Path(tmp))
        ready = remote.run(f"rm -rf {TLS} && install -d -m 700 {TLS}", nodes)
        sent = remote.put([f"{tmp}/cert.pem", f"{tmp}/key.pem"], ready.ok, TLS) if ready.ok else []
    if bad := [f"{r.host}: {r.error or r.stderr.strip()[-200:]}" for r in [*ready.failed, *sent] if not r.ok]:
        raise RuntimeError("the platform's TLS credentials did not reach " + "; ".join(bad))


def payload(db_dir: Path, queries: Path, out: Path) -> Path:
    """What an instance of the platform needs, as one tar unpacked at /: the g5kdeploy
    sources the tasks import (NODE_SOURCE), the database, the queries and fresh TLS
    credentials (ROOT; the key readable by root only). `out`: a file only root reads."""
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-tls-") as tls:
        _certificate(Path(tls))
        with tarfile.open(fileobj=io.BytesIO(chef.sources()), mode="r:gz") as src, tarfile.open(out, "w") as tar:
            for member in src.getmembers():
                data = src.extractfile(member) if member.isfile() else None
                member.name = f"{NODE_SOURCE.lstrip('/')}/{member.name}"
                tar.addfile(member, data)
            root = ROOT.lstrip("/")
            tar.add(db_dir, arcname=f"{root}/db")
            tar.add(queries, arcname=f"{root}/{Path(QUERIES).name}")
            tar.add(tls, arcname=f"{root}/tls")
    os.chmod(out, 0o600)
    return out


def ship(db_dir: Path, queries: Path, workers: list[Node], readers: list[Node]) -> list[dict]:
    """The database to every worker along a chain (the thesis shipped it in the image),
    the queries to the nodes that read them; one outcome per worker."""
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-") as tmp:
        archive = Path(tmp) / "db.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(db_dir, arcname="db")
        t0 = time.time()
        sent = remote.chain_put(archive, workers, ROOT)
        size = archive.stat().st_size
    unpacked = remote.run(f"cd {ROOT} && rm -rf db && tar -xf db.tar && rm db.tar", sent.ok) if sent.ok else []
    end = time.time()
    copied = remote.put([queries], readers, ROOT)
    if bad := [f"{r.host}: {r.error or r.stderr.strip()[-200:]}" for r in [*sent.failed, *unpacked, *copied] if not r.ok]:
        raise RuntimeError("shipping the data failed on " + "; ".join(bad))
    return [{"host": h, "bytes": size, "time_s": end - t0} for h in sent.ok]


def sequential(node: Node, out: str = f"{ROOT}/hits-sequential.tsv") -> dict:
    """The reference: one blastx process over every query on one node."""
    r = remote.run(f"{BLAST} sequential {QUERIES} {DB} {out}", [node])[0]
    answer = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    if not r.ok:
        raise RuntimeError(f"sequential blastx on {node.short}: {answer.get('error') or r.error or r.stderr[-300:]}")
    return answer


def worker_name(node: Node) -> str:
    return f"{node.site}/{node.short}"


# Instances boot IMAGE, which carries Dask and BLAST+ itself, with a key pair of the
# platform's; once their sshd answers, the platform's payload (sources, database, queries, TLS
# credentials) is put in over ssh and the daemon started, as any user of any cloud would:
# nothing of the cloud's VMMs is used, so a cloud we did not deploy (FutureGrid's) serves too.
IMAGE = "debian-blast"
BOOT_TIMEOUT_S = 600          # RunInstances -> sshd answering (a Debian guest under TCG: ~30-60 s)
ROLE_TAG = "g5kdeploy:sky"    # the tag of the platform's instances: the owner's name


@dataclass
class Cloud:
    """Where a platform's instances come from: a cloud's EC2 client (boto3), and a key pair
    of the platform's own in it. `open()` makes the key pair; `close()` terminates every
    instance tagged with `owner` and deletes the key pair (others' instances stay)."""
    ec2: object
    owner: str
    key_name: str = ""
    key: Path | None = None

    def open(self) -> "Cloud":
        self.key_name = f"sky-{self.owner}-{secrets.token_hex(3)}"
        made = self.ec2.create_key_pair(KeyName=self.key_name, KeyType="ed25519")
        self.key = Path(tempfile.mkdtemp(prefix="g5kdeploy-sky-key-")) / "key.pem"
        write_atomic(self.key, made["KeyMaterial"], 0o600)
        return self

    def close(self) -> None:
        mine = [i["InstanceId"] for r in self.ec2.describe_instances(
            Filters=[{"Name": f"tag:{ROLE_TAG}", "Values": [self.owner]}])["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("shutting-down", "terminated")]
        if mine:
            self.ec2.terminate_instances(InstanceIds=mine)
        if self.key_name:
            self.ec2.delete_key_pair(KeyName=self.key_name)
        if self.key:
            self.key.unlink(missing_ok=True)
            self.key.parent.rmdir()
        self.key_name, self.key = "", None

    def launch(self, site: str, count: int, instance_type: str, role: str) -> list["Instance"]:
        """`count` instances of IMAGE asked now (they boot in the background)."""
        r = self.ec2.run_instances(ImageId=IMAGE, MinCount=count, MaxCount=count, InstanceType=instance_type,
                                   KeyName=self.key_name, TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                       {"Key": ROLE_TAG, "Value": self.owner}, {"Key": "role", "Value": role}]}])
        return [Instance(self, i["InstanceId"], site) for i in r["Instances"]]


@dataclass
class Instance:
    """A platform's instance; it ends with TerminateInstances."""
    cloud: Cloud
    id: str
    site: str
    joined: threading.Thread | None = None       # booting, getting the payload, starting its worker
    error: str = ""
    times: dict = field(default_factory=dict)    # asked, booted, ready (time.time())

    @property
    def name(self) -> str:
        return f"{self.site}/{self.id}"

    def guest(self, timeout: float = BOOT_TIMEOUT_S) -> remote.Guest:
        """Once it runs and its sshd answers: the guest to run commands in."""
        deadline = time.monotonic() + timeout
        address, why = None, "not running"
        while time.monotonic() < deadline:
            i = self.cloud.ec2.describe_instances(InstanceIds=[self.id])["Reservations"][0]["Instances"][0]
            state = i["State"]["Name"]
            if state in ("shutting-down", "terminated"):
                raise RuntimeError(f"{self.name} is {state}: {i.get('StateReason', {}).get('Message', '')}")
            if state == "running" and (address := i.get("PrivateIpAddress")):
                guest = remote.Guest(address, str(self.cloud.key), self.name)
                r = remote.run("true", [guest], timeout=30)[0]
                if r.ok:
                    self.times["booted"] = time.time()
                    return guest
                why = r.error or r.stderr.strip()[-200:]
            time.sleep(1)
        raise RuntimeError(f"{self.name} ({address or 'no address'}): no ssh after {timeout:.0f} s: {why}")

    def stop(self, signal: str = "TERM") -> None:
        """Terminated, whatever the signal: a vanished guest says no goodbye either way."""
        self.cloud.ec2.terminate_instances(InstanceIds=[self.id])


def ready(instance: Instance, payload: Path) -> remote.Guest:
    """Boot the instance and put the payload in; the guest."""
    guest = instance.guest()
    sent = remote.put([payload], [guest], "/root")[0]
    unpacked = remote.run(f"tar -xf /root/{payload.name} -C / && rm -f /root/{payload.name}", [guest])[0] if sent.ok \
        else sent
    if not unpacked.ok:
        raise RuntimeError(f"{instance.name}: the payload did not unpack: {unpacked.error or unpacked.stderr[-200:]}")
    instance.times["ready"] = time.time()
    return guest


@dataclass
class Daemon:
    node: Node | remote.Guest
    pid: int

    def stop(self, signal: str = "TERM") -> None:
        """The signal, then SIGKILL if it still runs 5 s later."""
        remote.run(f"kill -{signal} {self.pid} 2>/dev/null; for i in $(seq 50); do kill -0 {self.pid} 2>/dev/null "
                   f"|| exit 0; sleep 0.1; done; kill -KILL {self.pid}", [self.node])


def _spawn(node: Node, command: str, log: str, what: str) -> Daemon:
    """Start a daemon in its own session on a node; its PID there."""
    r = remote.run(f"mkdir -p {ROOT} && cd {ROOT} && (setsid {command} > {log} 2>&1 < /dev/null & echo $!)", [node])[0]
    if not r.ok or not r.stdout.strip().isdigit():
        raise RuntimeError(f"cannot start the {what} on {node.short}: {r.error or r.stderr.strip()[-200:]}")
    return Daemon(node, int(r.stdout))


@dataclass
class Platform:
    """The scheduler and its workers, for the block of `running()`. `master`: where the
    scheduler and the job's client run (a node, or an instance's guest); `payload`: what
    instances asked by add_instances get (payload())."""
    master: Node | remote.Guest
    threads: int = 1
    payload: Path | None = None
    scheduler: Daemon | None = None
    workers: dict[str, Daemon | Instance] = field(default_factory=dict)     # worker name -> what runs it

    @property
    def address(self) -> str:
        return f"tls://{self.master.address}:{PORT}"

    @contextmanager
    def running(self):
        """`with Platform(master).running() as plat:` the scheduler up for the block; every
        daemon and instance it started ended when the block ends."""
        try:
            self._start()
            yield self
        finally:
            self._stop()

    def _start(self) -> None:
        log = f"{ROOT}/scheduler.log"
        self.scheduler = _spawn(self.master, f"{SCHEDULER} --protocol tls --host {self.master.address} "
                                             f"--port {PORT} --no-dashboard {TLS_FLAGS}", log, "Dask scheduler")
        up = remote.run(f"for i in $(seq 150); do grep -q 'Scheduler at' {log} && exit 0; "
                        f"kill -0 {self.scheduler.pid} || break; sleep 0.2; done; tail -3 {log}; exit 1", [self.master])[0]
        if not up.ok:
            raise RuntimeError(f"the Dask scheduler did not start on {self.master.short}: {up.stdout.strip()[-300:]}")

    def _worker(self, name: str, local_dir: str) -> str:
        return (f"{WORKER} {self.address} --name {name} --nthreads {self.threads} --no-nanny --no-dashboard "
                f"--death-timeout 60 --local-directory {local_dir} {TLS_FLAGS}")

    def add_workers(self, nodes: list[Node]) -> list[str]:
        """Start one worker per node, joining the running scheduler (and job); their names."""
        def start(node: Node) -> Daemon:
            return _spawn(node, self._worker(worker_name(node), f"{ROOT}/dask"), f"{ROOT}/worker.log", "Dask worker")
        outcomes = parallel(start, nodes, f"starting {len(nodes)} Dask workers")
        for o in outcomes:
            if o.ok:
                self.workers[worker_name(o.item)] = o.value
        if failed := [o.error for o in outcomes if not o.ok]:
            raise RuntimeError("; ".join(failed))
        return [worker_name(n) for n in nodes]

    def add_instances(self, cloud: Cloud, site: str, count: int, instance_type: str) -> list[str]:
        """Ask a site's cloud for `count` instances that become workers of this platform once
        booted and given the payload (in the background: they join the running job then);
        their names."""
        names = []
        for instance in cloud.launch(site, count, instance_type, "dask-worker"):
            instance.times["asked"] = time.time()
            instance.joined = threading.Thread(target=self._join, args=(instance,), daemon=True)
            instance.joined.start()
            self.workers[instance.name] = instance
            names.append(instance.name)
        return names

    def _join(self, instance: Instance) -> None:
        try:
            guest = ready(instance, self.payload)
            _spawn(guest, self._worker(instance.name, "/tmp/dask"), f"{ROOT}/worker.log", "Dask worker")
        except Exception as e:          # said by wait_joined, or by the job that misses the worker
            instance.error = str(e)

    def wait_joined(self) -> None:
        """Until every instance asked so far runs its worker; RuntimeError if one cannot."""
        for i in self.instances():
            i.joined.join()
        if failed := [f"{i.name}: {i.error}" for i in self.instances() if i.error]:
            raise RuntimeError("instances did not become workers: " + "; ".join(failed))

    def instances(self) -> list[Instance]:
        return [w for w in self.workers.values() if isinstance(w, Instance)]

    def kill_worker(self, name: str) -> None:
        """Lose a worker as a crash would, with no goodbye to the scheduler: SIGKILL, or its
        instance terminated."""
        self.workers.pop(name).stop("KILL")

    def _stop(self) -> None:
        for i in self.instances():
            i.joined.join()             # then the worker it may have started ends with the instance
        for daemon in [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]:
            daemon.stop()
        self.workers.clear()
        self.scheduler = None

    def job(self, chunks: int, actions: dict[float, Callable[[], object]] | None = None,
            timeout: float = 3600) -> list[dict]:
        """Run the BLASTx job in `chunks` tasks on the current workers; when a fraction of the
        tasks is done, call its action once. Every event, actions included, in order."""
        pending = sorted((actions or {}).items())
        self.wait_joined()
        stream = remote.Stream(f"{JOB} {self.address} {QUERIES} {DB} {chunks} {ROOT}/hits.tsv "
                               f"--workers {len(self.workers)} --tls {TLS}", self.master, timeout=timeout)
        events, total, done = [], chunks, 0
        try:
            for line in stream:
                if not line.startswith("{"):
                    continue
                events.append(e := json.loads(line))
                total = e.get("tasks", total)
                done += e["event"] == "task"
                while pending and done >= pending[0][0] * total:
                    fraction, action = pending.pop(0)
                    t0 = time.time()
                    value = action()
                    events.append({"event": "action", "t": t0, "end": time.time(), "fraction": fraction,
                                   "done": done, "result": value})
        finally:
            stream.kill()
        result = stream.result()
        if not any(e["event"] == "done" for e in events):
            errors = [e["error"] for e in events if e["event"] == "error"]
            raise RuntimeError(f"the BLASTx job failed: {errors[0] if errors else result.error or result.stderr[-300:]}")
        return events

