"""A sky-computing platform (thesis §3.3–3.4): a Dask scheduler on the master (the first
node of the first site) and workers on every site that join it over the WAN, either on
reserved nodes or on instances asked from the sites' clouds (EC2 API); the protein
database broadcast to every worker's node along a chain; the BLASTx job followed from the
frontend while it runs (to extend the platform or lose a worker at a given fraction of
the tasks done)."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from g5kdeploy import NODE_SOURCE, chef, on_node, remote
from g5kdeploy.progress import parallel
from g5kdeploy.sky.data import DB_NAME
from g5kdeploy.testbed.model import Node

ROOT = "/var/lib/g5kdeploy-sky"           # on every node of the platform (the sky-node role makes it)
DB = f"{ROOT}/db/{DB_NAME}"
QUERIES = f"{ROOT}/queries.fasta"
PORT = 8786
TLS = f"{ROOT}/tls"                       # the platform's certificate and key (mutual TLS, root only)
TLS_FLAGS = f"--tls-ca-file {TLS}/cert.pem --tls-cert {TLS}/cert.pem --tls-key {TLS}/key.pem"
BLAST, JOB = on_node("g5kdeploy.sky.blast"), on_node("g5kdeploy.sky.job")
SCHEDULER, WORKER = on_node("distributed.cli.dask_scheduler"), on_node("distributed.cli.dask_worker")


def configure(nodes: list[Node], logdir: Path | None = None) -> None:
    """Converge the sky-node role (Dask, BLAST+, the g5kdeploy sources) on every node."""
    chef.apply_all({n: ("sky-node", {"g5kdeploy": {"sky_root": ROOT}}) for n in nodes}, logdir=logdir)


def credentials(nodes: list[Node]) -> None:
    """A fresh self-signed certificate and key for this platform, on every node of it: the
    scheduler, workers and client accept only peers that hold them (Dask's mutual TLS), so
    nobody else who reaches the scheduler can submit code to the workers."""
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-tls-") as tmp:
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                               "-nodes", "-days", "30", "-subj", "/CN=g5kdeploy-sky", "-keyout", f"{tmp}/key.pem",
                               "-out", f"{tmp}/cert.pem"], capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"openssl: {made.stderr.strip()[-300:]}")
        os.chmod(f"{tmp}/key.pem", 0o600)
        ready = remote.run(f"rm -rf {TLS} && install -d -m 700 {TLS}", nodes)
        sent = remote.put([f"{tmp}/cert.pem", f"{tmp}/key.pem"], ready.ok, TLS) if ready.ok else []
    if bad := [f"{r.host}: {r.error or r.stderr.strip()[-200:]}" for r in [*ready.failed, *sent] if not r.ok]:
        raise RuntimeError("the platform's TLS credentials did not reach " + "; ".join(bad))


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


# Instances boot IMAGE, which carries Dask and BLAST+ itself; their user data mounts, read-only,
# the VMM directories of SHARES at the same paths (9p tags host0, host1, ...: the instance tag
# share lists them; the cloud allows exactly these) — the g5kdeploy sources the tasks import and
# the platform's directory (database copy, TLS credentials) — and runs the worker; the scheduler
# address is in the context (the thesis put the Hadoop master's IP in the context profile).
IMAGE = "debian-blast"
SHARES = (NODE_SOURCE, ROOT)
INSTANCE_WORKER = """#!/bin/sh
set -e
k=0
for dir in {shares}; do
  mkdir -p $dir
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 host$k $dir
  k=$((k + 1))
done
exec {command}
"""


@dataclass
class Daemon:
    node: Node
    pid: int

    def stop(self, signal: str = "TERM") -> None:
        """The signal, then SIGKILL if it still runs 5 s later."""
        remote.run(f"kill -{signal} {self.pid} 2>/dev/null; for i in $(seq 50); do kill -0 {self.pid} 2>/dev/null "
                   f"|| exit 0; sleep 0.1; done; kill -KILL {self.pid}", [self.node])


@dataclass
class Instance:
    """A worker on a cloud instance; it ends with TerminateInstances."""
    ec2: object                           # the boto3 EC2 client of its cloud
    id: str

    def stop(self, signal: str = "TERM") -> None:
        """Terminated, whatever the signal: a vanished guest says no goodbye either way."""
        self.ec2.terminate_instances(InstanceIds=[self.id])


def _spawn(node: Node, command: str, log: str, what: str) -> Daemon:
    """Start a daemon in its own session on a node; its PID there."""
    r = remote.run(f"mkdir -p {ROOT} && cd {ROOT} && (setsid {command} > {log} 2>&1 < /dev/null & echo $!)", [node])[0]
    if not r.ok or not r.stdout.strip().isdigit():
        raise RuntimeError(f"cannot start the {what} on {node.short}: {r.error or r.stderr.strip()[-200:]}")
    return Daemon(node, int(r.stdout))


@dataclass
class Platform:
    """The scheduler and its workers, for the block of `running()`."""
    master: Node
    threads: int = 1
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

    def add_instances(self, ec2, site: str, count: int, instance_type: str) -> list[str]:
        """Ask a site's cloud for `count` instances that boot into workers of this platform
        (they join when booted); their names."""
        r = ec2.run_instances(ImageId=IMAGE, MinCount=count, MaxCount=count, InstanceType=instance_type,
                              UserData=INSTANCE_WORKER.format(shares=" ".join(SHARES),
                                                              command=self._worker(f"{site}/$g5k_id", "/tmp/dask")),
                              TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                  {"Key": "share", "Value": " ".join(SHARES)}, {"Key": "role", "Value": "dask-worker"}]}])
        names = []
        for i in r["Instances"]:
            names.append(f"{site}/{i['InstanceId']}")
            self.workers[names[-1]] = Instance(ec2, i["InstanceId"])
        return names

    def kill_worker(self, name: str) -> None:
        """Lose a worker as a crash would, with no goodbye to the scheduler: SIGKILL, or its
        instance terminated."""
        self.workers.pop(name).stop("KILL")

    def _stop(self) -> None:
        for daemon in [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]:
            daemon.stop()
        self.workers.clear()
        self.scheduler = None

    def job(self, chunks: int, actions: dict[float, Callable[[], object]] | None = None,
            timeout: float = 3600) -> list[dict]:
        """Run the BLASTx job in `chunks` tasks on the current workers; when a fraction of the
        tasks is done, call its action once. Every event, actions included, in order."""
        pending = sorted((actions or {}).items())
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

