"""A real OAR 2.5.9 server on the frontend: PostgreSQL, Almighty, the resources = the nodes.
Recipe measured in shared/notes/oar-local.md."""
from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from g5kdeploy.errors import UserError
from g5kdeploy.files import write_atomic
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.local.state import Journal
from g5kdeploy.testbed.local.system import Proc, children, kill, processes, sh, start_time
from g5kdeploy.testbed.oar import OarCli

USER = "g5kdeploy"          # OAR refuses jobs from root: reservations are made as this user
OAR_CONF = Path("/etc/oar/oar.conf")
ALMIGHTY_PID = Path("/var/run/oar-server.pid")
SETTINGS = {
    "DB_HOSTNAME": "oar-server",
    "SERVER_HOSTNAME": "oar-server", "DEPLOY_HOSTNAME": "oar-server", "COSYSTEM_HOSTNAME": "oar-server",
    "JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD": "cpuset",   # oarsh needs a cpuset name
    # Almighty defers a scheduling asked < 5 s after the previous one to its next 10 s tick:
    # a reservation right after a release waited 11 s instead of 1.5 s
    "SCHEDULER_MIN_TIME_BETWEEN_2_CALLS": "0",
    # oarwalltime, as on Grid'5000 (invoke walltime --extend): any increase, applied at once
    "WALLTIME_CHANGE_ENABLED": "yes", "WALLTIME_MAX_INCREASE": "-1",
}


def run_as_user(argv: list[str]) -> subprocess.CompletedProcess:
    home = pwd.getpwnam(USER).pw_dir   # oarsub takes $PWD as the job's directory
    return subprocess.run(["runuser", "-u", USER, "--", *argv], capture_output=True, text=True, cwd=home,
                          env={**os.environ, "PWD": home, "HOME": home})


def client() -> OarCli:
    return OarCli(run_as_user)


def check_installed() -> None:
    for tool in ("oarsub", "oar-server", "pg_ctlcluster", "taktuk", "sshd"):
        if not any(Path(d, tool).exists() for d in ("/usr/bin", "/usr/sbin")):
            raise UserError(f"{tool} is not installed: run ./bootstrap.sh first")


def configure(desc: Description) -> None:
    """oar.conf (with fresh database passwords: the database is made again with them),
    PostgreSQL access from the nodes, the submitting user (idempotent)."""
    text = OAR_CONF.read_text()
    passwords = {"DB_BASE_PASSWD": secrets.token_hex(16), "DB_BASE_PASSWD_RO": secrets.token_hex(16)}
    for key, value in {**SETTINGS, **passwords}.items():
        line = f'{key}="{value}"'
        text, n = re.subn(rf"^#?{key}=.*$", line, text, flags=re.M)
        if not n:
            text += line + "\n"
    text = re.sub(r"^CPUSET_PATH=", "#CPUSET_PATH=", text, flags=re.M)   # no cgroups here
    oar = pwd.getpwnam("oar")
    write_atomic(OAR_CONF, text, 0o600)             # OAR's own: user oar, mode 0600, as its package sets it
    os.chown(OAR_CONF, oar.pw_uid, oar.pw_gid)
    conf = _pg_conf_dir()
    pg = (conf / "postgresql.conf").read_text()
    pg = re.sub(r"^#?listen_addresses\s*=.*$", f"listen_addresses = 'localhost,{desc.frontend_address}'",
                pg, flags=re.M)
    _rewrite(conf / "postgresql.conf", pg)
    hba = conf / "pg_hba.conf"
    if "198.18.0.0/15" not in hba.read_text():
        _rewrite(hba, hba.read_text() + "host all all 198.18.0.0/15 scram-sha-256\n")
    ensure_user()


def ensure_user() -> None:
    """The submitting user, made once (the nodes see it too: their root is this machine's).
    No password can log it in (`*`), but its account is not locked (`!`), which sshd would
    refuse even with a key: on the nodes of its jobs it logs in with the testbed's key."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        sh("useradd", "-m", "-s", "/bin/bash", "-p", "*", USER)
    if sh("getent", "shadow", USER).stdout.split(":")[1].startswith("!"):
        sh("usermod", "-p", "*", USER)


def _rewrite(path: Path, text: str) -> None:
    """Replace a configuration file whole, keeping its mode and owner."""
    st = path.stat()
    write_atomic(path, text, stat.S_IMODE(st.st_mode))
    os.chown(path, st.st_uid, st.st_gid)


def pg_version() -> str:
    return sorted(os.listdir("/usr/lib/postgresql"), key=int)[-1]


def _pg_conf_dir() -> Path:
    v = pg_version()
    if not Path(f"/etc/postgresql/{v}/main").exists():
        sh("pg_createcluster", v, "main")
    return Path(f"/etc/postgresql/{v}/main")


def start_postgres(journal: Journal, desc: Description) -> None:
    v = pg_version()
    status = sh("pg_ctlcluster", v, "main", "status", check=False)
    if status.returncode == 0:
        sh("pg_ctlcluster", v, "main", "reload")
        if desc.frontend_address not in sh("ss", "-ltn").stdout:
            sh("pg_ctlcluster", v, "main", "restart")   # was running before us: leave it running
        return
    journal.record("postgres", version=v)
    sh("pg_ctlcluster", v, "main", "start")


def stop_postgres(version: str) -> None:
    sh("pg_ctlcluster", version, "main", "stop", check=False)


def prepare_database(desc: Description) -> None:
    """A clean OAR database whose resources are exactly the testbed's reservable nodes."""
    # drop + create, not --reset: --reset loses the read-only user's grants
    sh("oar-database", "--drop", "--db-is-local", "-y", check=False)
    sh("oar-database", "--create", "--db-is-local", "-y")
    # job ids start again from 1: an earlier testbed's OAR.<name>.<id>.stdout would be appended to
    for old in Path(pwd.getpwnam(USER).pw_dir).glob("OAR.*.std*"):
        old.unlink()
    grid5000_queue_and_types()
    for prop in ("site", "cluster", "host"):
        sh("oarproperty", "-c", "-a", prop)
    script = "".join(
        f"oarnodesetting -a -h {n.hostname} -p host={n.hostname} -p site={n.site} "
        f"-p cluster={n.cluster} -p deploy=YES >/dev/null || exit 1\n" for n in desc.reservable())
    sh("sh", "-e", input=script)


def grid5000_queue_and_types() -> None:
    """What Grid'5000's OAR has beyond a stock one: the production queue and the exotic job
    type (added to the admission rule that checks job types)."""
    sh("oarnotify", "--add-queue", "production,5,oar_sched_gantt_with_timesharing_and_fairsharing_and_quotas")
    rule = re.search(r"--- \((\d+)\) RULE #\d+\n# Check if job types are valid", sh("oaradmissionrules", "-S").stdout)
    if not rule:
        raise RuntimeError("OAR has no admission rule checking job types: its exotic type cannot be added")
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-oar-") as tmp:
        os.chmod(tmp, 0o777)                       # oaradmissionrules writes and reads it as user oar
        script = Path(tmp) / "rule.pl"
        sh("oaradmissionrules", "-s", rule[1], "-w", str(script))
        script.write_text(script.read_text().replace("my @types = (\n", "my @types = (\n    qr/^exotic$/,\n", 1))
        sh("oaradmissionrules", "-m", rule[1], "-r", str(script))


def resources_match(desc: Description) -> bool:
    p = sh("oarnodes", "-l", check=False)
    return p.returncode == 0 and sorted(p.stdout.split()) == sorted(desc.reservable().hostnames())


def start_almighty(journal: Journal) -> None:
    journal.record("pidfile", path=str(ALMIGHTY_PID), match="Almighty")
    sh("/usr/sbin/oar-server")   # daemonizes, writes its pid file
    deadline = time.monotonic() + 10
    while pidfile_process(ALMIGHTY_PID, "Almighty") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("Almighty did not start: see /var/log/oar.log")
        time.sleep(0.05)


SUDOERS = Path("/etc/sudoers.d/g5kdeploy")
BATCH = Path("/usr/local/sbin/g5kdeploy-batch")
BATCH_TASKS = ("experiment", "deploy-nimbus", "nimbus-destroy", "release", "walltime", "report", "benchmark")
BATCH_ENV = ("OAR_JOB_ID", "OAR_NODEFILE", "OAR_JOB_NAME", "G5KDEPLOY_TESTBED", "G5KDEPLOY_RESULTS", "G5KDEPLOY_HOME")
WRAPPER = """#!/bin/sh
# written by g5kdeploy (invoke testbed-up), removed by invoke testbed-destroy: what batch jobs
# (user {user}) may run as root: these tasks of this checkout, nothing else
case "$1" in
  {tasks}) ;;
  *) echo "g5kdeploy-batch: '$1' is not a batch task ({tasks})" >&2; exit 2 ;;
esac
cd {checkout} || exit 1
exec {python} -m invoke "$@"
"""


def allow_batch_jobs(journal: Journal) -> None:
    """Batch jobs run as USER (OAR refuses root), yet the local Kadeploy and tc need root, which
    Grid'5000 users reach through its services: USER may run this checkout's batch tasks as
    root (a root-owned wrapper; only the variables the tasks read pass)."""
    checkout = Path(__file__).resolve().parents[3]
    journal.record("file", path=str(BATCH))
    write_atomic(BATCH, WRAPPER.format(user=USER, tasks="|".join(BATCH_TASKS), checkout=shlex.quote(str(checkout)),
                                       python=shlex.quote(sys.executable)), 0o755)
    journal.record("file", path=str(SUDOERS))
    write_atomic(SUDOERS, f"# written by g5kdeploy (invoke testbed-up), removed by invoke testbed-destroy\n"
                          f'Defaults:{USER} env_keep += "{" ".join(BATCH_ENV)}"\n'
                          f"{USER} ALL=(root) NOPASSWD: {BATCH}\n", 0o440)


def start_frontend_sshd(journal: Journal, desc: Description, workdir: Path) -> None:
    """OAR's sshd (port 6667) on the frontend: deploy jobs run their command here."""
    pidfile = workdir / "oar-sshd-frontend.pid"
    journal.record("pidfile", path=str(pidfile), match="sshd")
    Path("/run/sshd").mkdir(exist_ok=True)
    sh("/usr/sbin/sshd", "-f", "/etc/oar/sshd_config", "-o", f"PidFile={pidfile}",
       "-o", f"ListenAddress={desc.frontend_address}", "-E", str(workdir / "oar-sshd-frontend.log"))


def pidfile_process(path: Path, match: str) -> int | None:
    """The live process named in a pid file, if its command line contains `match`."""
    try:
        pid = int(Path(path).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None
    return pid if match in cmdline and start_time(pid) is not None else None


def stop_pidfile(path: str, match: str) -> None:
    """TERM the process (Almighty ends its own children), then any child left, by PID."""
    pid = pidfile_process(Path(path), match)
    if pid is not None:
        kids = children(pid)
        kill(pid, term_first=True)
        for k in kids:
            kill(k, term_first=True, timeout=2)
    Path(path).unlink(missing_ok=True)


def jobs_processes() -> list[Proc]:
    """Live processes of the OAR users (`oar` and the submitting user): OAR's and its jobs'."""
    uids = set()
    for user in ("oar", USER):
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
    return [p for p in processes() if p.uid in uids]
