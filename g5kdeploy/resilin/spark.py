"""The engine: Apache Spark standalone (a master, one worker per core or task instance),
started on a cluster's nodes by one shell script per node (the thesis found one ssh
connection per configuration action too slow). Every daemon and application of a cluster
shares one secret (Spark's `spark.authenticate`, RPC encrypted): nobody else who reaches
the master can run code on the workers. The daemons' web UIs (read-only status pages)
listen on the loopback only (UI_ADDRESS).

On a node, a cluster lives in ROOT/<job flow>/<instance>/: spark.conf and s3.json (mode
600), the daemon's pid and log, its bootstrap actions and their logs."""
from __future__ import annotations

import shlex

from g5kdeploy import NODE_SOURCE

SPARK = "/opt/g5kdeploy/spark"                # pyspark and py4j (the g5kdeploy::spark recipe)
SPARK_HOME = f"{SPARK}/pyspark"
CDS = f"{SPARK}/spark"                           # its JVMs' class-data-sharing archive (g5kdeploy.jvm's layout)
CLASSPATH_JAR = f"{CDS}-classpath.jar"           # first in every Spark JVM's class path
EMULATED = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"   # a JVM under TCG: C1 only (C2 costs more than it gives)
ROOT = "/var/lib/g5kdeploy-resilin"
USER = "resilin"                              # who runs the engine (and the users' code) on a VMM host
PYTHON = "/usr/bin/python3"
ENVIRONMENT = {"SPARK_HOME": SPARK_HOME, "PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON,
               "PYTHONPATH": f"{SPARK}:{NODE_SOURCE}", "SPARK_DAEMON_MEMORY": "256m",
               "SPARK_DAEMON_CLASSPATH": CLASSPATH_JAR}
ENV = " ".join(f"{k}={v}" for k, v in ENVIRONMENT.items())     # as shell words
UI_ADDRESS = "127.0.0.1"        # the daemons' web UIs: Spark binds them to SPARK_LOCAL_IP (their RPC: --host)
EXECUTOR_MEMORY = "512m"                      # Spark's least (it reserves 300 MiB, and 1.5x that is its floor)
WORKER_MEMORY = "1g"
READY = {"master": "I have been elected leader", "worker": "Successfully registered with master"}
CLASSES = {"master": "org.apache.spark.deploy.master.Master", "worker": "org.apache.spark.deploy.worker.Worker"}


def directory(flow: str, node: str) -> str:
    return f"{ROOT}/{flow}/{node}"


def java_options(emulated: bool) -> str:
    """Every Spark JVM's options: the shared archive, and C1 only where it runs emulated."""
    return f"-XX:SharedArchiveFile={CDS}.jsa -Xshare:auto" + (f" {EMULATED}" if emulated else "")


def env(emulated: bool) -> str:
    """The environment (shell words) of the scripts that start Spark's daemons and steps."""
    return (f"{ENV} SPARK_DAEMON_JAVA_OPTS={shlex.quote(java_options(emulated))}"
            + (f" SPARK_LAUNCHER_OPTS={shlex.quote(EMULATED)}" if emulated else ""))


def properties(secret: str, emulated: bool = False) -> str:
    """spark.conf of every daemon and application of one cluster."""
    return "\n".join([
        *(f"spark.{side}.extraJavaOptions {java_options(emulated)}" for side in ("driver", "executor")),
        *(f"spark.{side}.extraClassPath {CLASSPATH_JAR}" for side in ("driver", "executor")),
        "spark.authenticate true", f"spark.authenticate.secret {secret}", "spark.network.crypto.enabled true",
        "spark.ui.killEnabled false", "spark.master.rest.enabled false", "spark.ui.enabled false",
        f"spark.executor.memory {EXECUTOR_MEMORY}", "spark.driver.memory 512m",
        f"spark.executorEnv.PYTHONPATH {SPARK}:{NODE_SOURCE}", f"spark.executorEnv.PYSPARK_PYTHON {PYTHON}",
        "spark.task.maxFailures 8", "spark.deploy.spreadOut true", ""])


def as_user(user: str | None) -> str:
    """The prefix that runs a command as `user` (None: as root), with a clean environment."""
    return f"setpriv --reuid={user} --regid={user} --init-groups --reset-env " if user else ""


def node_script(where: str, role: str, address: str, master: str, port: int, cores: int,
                bootstrap: list[tuple[str, str, list[str]]], user: str | None = None, emulated: bool = False,
                timeout_s: int = 300) -> str:
    """The one script that makes a node part of its cluster: the bootstrap actions (name,
    object URL, args), fetched from the cloud's storage and run in order, then the Spark
    daemon (`master`, or a `worker` of spark://master:port), waited for until it is up; all
    of it as `user` (on a VMM host: USER, never root). Everything from the request is
    quoted; a failure says which part failed."""
    q, run, environment = shlex.quote, as_user(user), env(emulated)
    lines = ["set -u", f"cd {q(where)}"] + ([f"chown -R {user}: {q(where)}"] if user else [])
    for k, (name, url, args) in enumerate(bootstrap, 1):
        lines += [f"{run}env {environment} {PYTHON} -m g5kdeploy.resilin.objects get {q(url)} bootstrap-{k} || exit 3",
                  f"chmod 700 bootstrap-{k}",
                  f"{run}./bootstrap-{k} {' '.join(map(q, args))} > bootstrap-{k}.log 2>&1 < /dev/null || "
                  f"{{ echo \"bootstrap action \"{q(name)}\" failed (exit $?): $(tail -c 300 bootstrap-{k}.log)\" >&2; "
                  "exit 4; }"]
    if role == "master":
        args = f"--host {q(address)} --port {port} --webui-port 0 --properties-file spark.conf"
    else:
        args = (f"--host {q(address)} --port 0 --webui-port 0 --cores {cores} --memory {WORKER_MEMORY} "
                f"--work-dir {q(where)}/work --properties-file spark.conf spark://{q(master)}:{port}")
    lines += [f"(setsid {run}env {environment} SPARK_LOCAL_IP={UI_ADDRESS} {SPARK_HOME}/bin/spark-class "
              f"{CLASSES[role]} {args} "
              f"> daemon.log 2>&1 < /dev/null & echo $! > pid)",
              f"for i in $(seq {timeout_s * 5}); do",
              f"  grep -q {q(READY[role])} daemon.log && exit 0",
              "  kill -0 \"$(cat pid)\" 2>/dev/null || break",
              "  sleep 0.2",
              "done",
              f"echo \"spark {role} did not start: $(grep -E 'ERROR|Exception' daemon.log | tail -c 300)\" >&2",
              "exit 5"]
    return "\n".join(lines) + "\n"


def stop_script(where: str) -> str:
    """Stop every daemon and step under `where` (a node's directory, or a job flow's) and
    everything they started (their sessions: executors, mappers), then remove the directory."""
    q = shlex.quote(where)
    return (f"for f in $(find {q} -name pid -type f 2>/dev/null); do p=$(cat \"$f\"); "
            f"kill -TERM -- -$p 2>/dev/null || kill -TERM $p 2>/dev/null; "
            f"for i in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; "
            f"kill -KILL -- -$p 2>/dev/null || kill -KILL $p 2>/dev/null; "
            f"done; rm -rf {q}; rmdir {shlex.quote(where.rsplit('/', 1)[0])} 2>/dev/null; true")
