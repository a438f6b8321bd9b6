"""Spark's JVMs started from a class-data-sharing archive (g5kdeploy.jvm): the classes a
master, a worker, a driver and an executor load, parsed and verified once, mapped at
start-up. Under TCG a guest's JVM spends most of its start in class loading and JIT
compilation: a Spark master took ~30 s to come up under QEMU's emulation, ~6.5 s with this
archive and C1 only.

The class names come from a short native training run (a master, a worker and a small
shuffle on 127.0.0.1, authenticated as a cluster). bootstrap.sh makes the archive on the
frontend, the g5kdeploy::spark recipe on nodes, and the debian-spark image dumps its own
with the guest's JVM from the frontend's class list. A JVM that finds the archive missing or
made by another JVM build runs without it (-Xshare:auto), only slower.

    python3 -m g5kdeploy.resilin.cds [--check]"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from g5kdeploy import jvm
from g5kdeploy.files import write_atomic
from g5kdeploy.resilin import spark

TRAINING = """
from pyspark import SparkContext
sc = SparkContext(appName="cds-training")
words = sc.parallelize([f"w{i % 97} {i}" for i in range(20000)], 4).map(lambda s: s.split())
pairs = words.map(lambda w: (w[0].encode(), 1)).partitionBy(2, lambda k: hash(k) % 2)
print(pairs.repartitionAndSortWithinPartitions(2).mapPartitions(lambda p: [sum(1 for _ in p)]).collect())
sc.stop()
"""


def _daemon(env: dict, cls: str, args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([f"{env['SPARK_HOME']}/bin/spark-class", cls, *args], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _wait(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m := re.search(pattern, log.read_text(errors="replace")):
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"CDS training: {log.stem} did not start: {log.read_text(errors='replace')[-300:]}")


def train(into: Path) -> list[str]:
    """The classes a master, a worker, a driver and an executor load in a small job (names,
    in load order, without duplicates)."""
    dump = {role: into / f"{role}.lst" for role in ("master", "worker", "driver", "executor")}
    (into / "spark.conf").write_text(spark.properties(secrets.token_hex(16)) + "\n".join([
        f"spark.driver.extraJavaOptions -XX:DumpLoadedClassList={dump['driver']}",
        f"spark.executor.extraJavaOptions -XX:DumpLoadedClassList={dump['executor']}",
        "spark.eventLog.enabled true", f"spark.eventLog.dir file://{into}", ""]))
    (into / "training.py").write_text(TRAINING)
    env = {**spark.ENVIRONMENT, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SPARK_LOCAL_IP": spark.UI_ADDRESS}
    conf = ["--properties-file", str(into / "spark.conf")]
    daemons = []
    try:
        master = _daemon({**env, "SPARK_DAEMON_JAVA_OPTS": f"-XX:DumpLoadedClassList={dump['master']}"},
                         spark.CLASSES["master"], ["--host", "127.0.0.1", "--port", "0", "--webui-port", "0", *conf],
                         into / "master.log")
        daemons.append(master)
        url = _wait(into / "master.log", r"Starting Spark master at (spark://\S+)", master)[1]
        worker = _daemon({**env, "SPARK_DAEMON_JAVA_OPTS": f"-XX:DumpLoadedClassList={dump['worker']}"},
                         spark.CLASSES["worker"], ["--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
                                                   "--cores", "1", "--memory", spark.WORKER_MEMORY,
                                                   "--work-dir", str(into / "work"), *conf, url], into / "worker.log")
        daemons.append(worker)
        _wait(into / "worker.log", spark.READY["worker"], worker)
        r = subprocess.run([f"{env['SPARK_HOME']}/bin/spark-submit", "--master", url, *conf, str(into / "training.py")],
                           env=env, capture_output=True, text=True, timeout=600, cwd=into)
        if r.returncode != 0:
            raise RuntimeError(f"CDS training: the job failed: {r.stderr.strip()[-300:]}")
    finally:
        for d in daemons:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGTERM)
            d.wait()
    names: dict[str, None] = {}
    for path in dump.values():
        for line in path.read_text().splitlines() if path.exists() else []:
            if line and not line.startswith(("#", "@")):
                names.setdefault(line.split()[0], None)       # "name id: N": ids differ between JVMs
    if not all(p.exists() for p in dump.values()):
        raise RuntimeError(f"CDS training: no class list from {[r for r, p in dump.items() if not p.exists()]}")
    return list(names)


def make() -> None:
    """The class-path jar, the class list and the archive in the Spark tree, unless usable
    already."""
    jars = Path(spark.SPARK_HOME, "jars")
    if not jars.is_dir():
        raise RuntimeError(f"{spark.SPARK} holds no pyspark: install it first (./bootstrap.sh)")
    jvm.write_classpath_jar(spark.CDS, sorted(p.relative_to(spark.SPARK).as_posix() for p in jars.glob("*.jar")))
    if jvm.usable(spark.CDS):
        return
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-cds-") as tmp:
        write_atomic(f"{spark.CDS}-classes.lst", "\n".join(train(Path(tmp))) + "\n")
    part = Path(f"{spark.CDS}.jsa.{os.getpid()}.part")        # two makers at once do not share it
    r = subprocess.run(jvm.dump_command(spark.CDS, into=str(part)), capture_output=True, text=True)
    if r.returncode != 0 or not part.exists():
        part.unlink(missing_ok=True)
        raise RuntimeError(f"CDS archive not dumped: {r.stdout.strip()[-300:]}")
    part.replace(f"{spark.CDS}.jsa")
    if not jvm.usable(spark.CDS):
        raise RuntimeError(f"{spark.CDS}.jsa was made but this JVM does not map it")


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return 0 if jvm.usable(spark.CDS) else 1
    if argv:
        print("usage: python3 -m g5kdeploy.resilin.cds [--check]", file=sys.stderr)
        return 2
    try:
        t0 = time.monotonic()
        make()
        print(f"cds: {spark.CDS}.jsa ready ({time.monotonic() - t0:.0f} s)")
        return 0
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"cds: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
