"""One step on the cluster's master: `python3 -m g5kdeploy.resilin.step DIR/steps/ID/spec.json`.

The step's JAR and arguments, as EMR takes them, become one spark-submit on the cluster:
  * `command-runner.jar` + `hadoop-streaming ...`, or a Hadoop streaming JAR (the thesis's
    EMR: `.../hadoop-streaming.jar` with `-mapper s3n://...`): g5kdeploy.resilin.streaming;
  * `command-runner.jar` + `spark-submit [options] APP [args]`: the application, its object
    URLs (APP, --py-files, --files, --jars) fetched first; client mode on our master;
  * a program in the cloud's storage (`s3://bucket/prog.py` or `.jar`, MainClass for a JAR).
stdout, stderr and Spark's event log (every task's executor and times) stay in the step's
directory and go to LogUri/<job flow>/steps/<step>/ when the job flow has a LogUri. Exit
status: spark-submit's; SIGTERM (CancelSteps) ends the whole application."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from g5kdeploy.resilin import objects
from g5kdeploy import NODE_SOURCE
from g5kdeploy.resilin.spark import SPARK_HOME

COMMANDS = ("hadoop-streaming", "spark-submit")
SUBMIT_VALUED = {"--class", "--name", "--conf", "--properties-file", "--driver-memory", "--executor-memory",
                 "--executor-cores", "--total-executor-cores", "--num-executors", "--py-files", "--files", "--jars",
                 "--packages", "--driver-java-options", "--driver-class-path", "--archives", "-c"}
DROPPED = {"--master", "--deploy-mode"}           # ours: the cluster's master, client mode
FETCHED = {"--py-files", "--files", "--jars"}


class StepError(Exception):
    pass


def is_streaming_jar(jar: str) -> bool:
    return "streaming" in jar.rsplit("/", 1)[-1] and jar.endswith(".jar")


def fetch(config: dict, value: str, into: Path) -> str:
    """An object URL -> the local copy's path; anything else unchanged."""
    if not objects.is_url(value):
        return value
    local = into / value.rstrip("/").rsplit("/", 1)[-1]
    objects.get(config, value, local)
    return str(local)


def application(spec: dict, config: dict, here: Path) -> list[str]:
    """What follows `spark-submit <our options>` for this step."""
    jar, args = spec["jar"], list(spec.get("args") or [])
    if jar == "command-runner.jar":
        if not args or args[0] not in COMMANDS:
            raise StepError(f"command-runner.jar runs {' or '.join(COMMANDS)} here, not {args[:1] or 'nothing'}")
        if args[0] == "hadoop-streaming":
            return [f"{NODE_SOURCE}/g5kdeploy/resilin/streaming.py", *args[1:]]
        out, it = [], iter(args[1:])
        for a in it:
            if a in DROPPED:
                next(it, None)
            elif a in SUBMIT_VALUED:
                value = next(it, "")
                if a in FETCHED:
                    value = ",".join(fetch(config, v, here) for v in value.split(","))
                out += [a, value]
            elif a.startswith("--") and "=" in a and a.split("=", 1)[0] in DROPPED:
                continue
            elif a.startswith("-"):
                out.append(a)
            else:
                return out + [fetch(config, a, here), *it]
        raise StepError("spark-submit needs an application (a .py or .jar, local or s3://)")
    if is_streaming_jar(jar):
        return [f"{NODE_SOURCE}/g5kdeploy/resilin/streaming.py", *args]
    if objects.is_url(jar) and jar.endswith((".py", ".jar")):
        main = ["--class", spec["main_class"]] if spec.get("main_class") else []
        return [*main, fetch(config, jar, here), *args]
    raise StepError(f"unsupported step JAR {jar!r}: use command-runner.jar, a streaming JAR, or an s3:// program")


def publish(config: dict, spec: dict, here: Path) -> None:
    """The step's logs to LogUri/<job flow>/steps/<step>/ (EMR's layout)."""
    if not spec.get("log_uri"):
        return
    where = objects.parse(spec["log_uri"].rstrip("/") + f"/{spec['flow']}/steps/{spec['id']}/", config["endpoint"])
    s3 = objects.client(config, where.endpoint)
    for f in ["stdout", "stderr", *(p.name for p in here.glob("app-*"))]:
        if (here / f).is_file():
            s3.upload_file(str(here / f), where.bucket, where.key + ("events" if f.startswith("app-") else f))


def main(argv: list[str]) -> int:
    here = Path(argv[0]).resolve().parent
    spec = json.loads(Path(argv[0]).read_text())
    cluster = Path(spec["cluster_dir"])
    config = objects.load_config(cluster)
    with open(here / "stdout", "wb") as out, open(here / "stderr", "wb") as err:
        try:
            app = application(spec, config, here)
        except (StepError, ValueError, OSError) as e:
            err.write(f"{e}\n".encode())
            print(str(e), file=sys.stderr)
            return 2
        except Exception as e:       # a fetch that failed: the object or the store
            print(f"cannot fetch the step's programs: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        conf = [x for k, v in (spec.get("properties") or {}).items() for x in ("--conf", f"{k}={v}")]
        cmd = [f"{SPARK_HOME}/bin/spark-submit", "--master", spec["master"], "--properties-file",
               str(cluster / "spark.conf"), "--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.compress=false",
               "--conf", "spark.eventLog.rolling.enabled=false",
               "--conf", f"spark.eventLog.dir=file://{here}", "--conf", f"spark.driver.host={spec['driver_host']}",
               *conf, *app]
        child = subprocess.Popen(cmd, cwd=here, stdout=out, stderr=err, start_new_session=True,
                                 env={**os.environ, "RESILIN_CLUSTER_DIR": str(cluster)})
        (here / "pid").write_text(str(os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(child.pid, signal.SIGKILL))
        code = child.wait()
    try:
        publish(config, spec, here)
    except Exception as e:
        print(f"logs not written to {spec.get('log_uri')}: {e}", file=sys.stderr)
    if code != 0:
        print(reason((here / "stderr").read_bytes()[-20000:].decode(errors="replace")), file=sys.stderr)
    return code


SPARK_LOG = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARN|DEBUG) ")


def reason(stderr: str) -> str:
    """Why a step failed, in one line: the program's own last words (its exception), not
    Spark's log lines after them."""
    lines = [x.strip() for x in stderr.splitlines()
             if x.strip() and not SPARK_LOG.match(x) and not x.startswith((" ", "\t", "Traceback"))]
    ours = [x for x in lines if x.startswith("streaming:")]
    return (ours or lines or ["no output"])[-1][:500]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
