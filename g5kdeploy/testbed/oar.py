"""OAR jobs, whoever serves them: the command-line tools (oarsub, oarstat -J, oardel,
oarwalltime) of the local testbed, or the Grid'5000 REST API (testbed/g5k.py).

Both give `Job`s; waiting, naming and adopting jobs is shared here."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from g5kdeploy.errors import UserError
from g5kdeploy.testbed.model import format_walltime

Runner = Callable[[list[str]], subprocess.CompletedProcess]
ENDED = ("terminated", "error", "finishing", "toerror")


@dataclass
class Job:
    """One OAR job as both OAR and the Grid'5000 API describe it (states in lower case)."""
    site: str
    id: int
    state: str
    name: str = ""
    hosts: list[str] = field(default_factory=list)
    start: float | None = None       # unix time the job started
    walltime_s: int = 0
    types: tuple[str, ...] = ()      # deploy, ...

    @property
    def live(self) -> bool:
        return self.state not in ENDED

    @property
    def end(self) -> float | None:
        return self.start + self.walltime_s if self.start else None


class Scheduler(ABC):
    """The OAR of a testbed's sites."""
    poll_s = (0.5, 2.0)          # first and longest wait between two polls (it grows by half each time)

    @abstractmethod
    def submit(self, site: str, resources: str, walltime_s: int, name: str, command: str,
               properties: str | None = None, types: tuple[str, ...] = (), queue: str | None = None,
               project: str | None = None, reservation: float | None = None) -> int:
        """Submit a job of `resources` (OAR's, e.g. `nodes=4`, Demand.resources) on `site` (in
        `queue`, for `project`; `reservation`: an advance reservation starting at that unix
        time); its id."""

    @abstractmethod
    def job(self, site: str, job: int) -> Job:
        """A job's current state, nodes, start and walltime."""

    @abstractmethod
    def live(self, site: str, name: str) -> list[Job]:
        """The user's waiting, launching or running jobs of that name on that site."""

    @abstractmethod
    def on_site(self, site: str) -> list[Job]:
        """Every user's live jobs on that site, with the hosts they hold."""

    @abstractmethod
    def delete(self, site: str, *jobs: int) -> None:
        """End jobs (oardel)."""

    @abstractmethod
    def extend(self, site: str, job: int, seconds: int) -> None:
        """Ask OAR for `seconds` more walltime (granted at its next scheduling pass)."""

    @abstractmethod
    def down(self, site: str) -> dict[str, str]:
        """The site's nodes that OAR will not give now (its state of them is not Alive), with
        that state in lower case: dead, absent, suspected, standby."""

    def holders(self, site: str) -> dict[str, Job]:
        """The site's nodes that running jobs hold, each with its job."""
        return {h: j for j in self.on_site(site) if j.state == "running" for h in j.hosts}

    def wait(self, jobs: dict[str, int], timeout: float | None = 300) -> dict[str, Job]:
        """Poll until every job runs (backing off, `poll_s`); a job that ends first is an
        error, and so is `timeout` seconds of waiting (None: wait as long as OAR queues them)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, longest = self.poll_s
        while True:
            st = {site: self.job(site, j) for site, j in jobs.items()}
            if all(s.state == "running" for s in st.values()):
                return st
            for s in st.values():
                if not s.live:
                    raise UserError(f"OAR job {s.id} on {s.site} ended ({s.state}) before running: "
                                    f"see oarstat -fj {s.id}")
            if deadline is not None and time.monotonic() > deadline:
                waiting = ", ".join(f"{s.site}:{s.id}:{s.state}" for s in st.values())
                raise UserError(f"OAR jobs not running after {timeout:.0f} s ({waiting}): nodes busy? see oarstat")
            time.sleep(delay)
            delay = min(longest, delay * 1.5)

    def wait_ended(self, pairs: list[tuple[str, int]], timeout: float = 60) -> None:
        """Poll until every (site, job) has ended (backing off, `poll_s`, from half a second)."""
        deadline, delay = time.monotonic() + timeout, 0.5
        while any(self.job(s, j).live for s, j in pairs):
            if time.monotonic() > deadline:
                raise UserError(f"OAR jobs {pairs} still live {timeout:.0f} s after oardel: see oarstat")
            time.sleep(delay)
            delay = min(self.poll_s[1], delay * 1.5)


def enclosing_job() -> tuple[int, list[str]] | None:
    """(OAR_JOB_ID, the hosts of OAR_NODEFILE) when running inside an OAR job, else None."""
    job, nodefile = os.environ.get("OAR_JOB_ID"), os.environ.get("OAR_NODEFILE")
    if not job:
        return None
    if not nodefile or not Path(nodefile).is_file():
        raise UserError(f"OAR_JOB_ID={job} is set but OAR_NODEFILE ({nodefile}) is not a file: "
                        "unset OAR_JOB_ID to reserve outside that job")
    return int(job), sorted(set(Path(nodefile).read_text().split()))


def _unix(value) -> float | None:
    value = int(value or 0)
    return float(value) if value > 0 else None


@dataclass
class OarCli(Scheduler):
    """OAR through its command-line tools; `run` runs them as the submitting user.
    One OAR serves every site: a job's site is the `site` property of its nodes."""
    run: Runner

    def _call(self, argv: list[str]) -> str:
        p = self.run(argv)
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).strip().splitlines()
            raise UserError(f"{argv[0]} failed: {msg[-1] if msg else 'exit ' + str(p.returncode)}")
        return p.stdout

    def submit(self, site, resources, walltime_s, name, command, properties=None, types=(), queue=None, project=None,
               reservation=None) -> int:
        where = f"site='{site}'" + (f" AND ({properties})" if properties else "")
        argv = ["oarsub", "-n", name, "-l", f"{resources},walltime={format_walltime(walltime_s)}", "-p", where]
        for t in types:
            argv += ["-t", t]
        argv += ["-q", queue] if queue else []
        argv += ["--project", project] if project else []
        # OAR reads the date in the server's local time
        argv += ["-r", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reservation))] if reservation else []
        out = self._call(argv + [command])
        m = re.search(r"OAR_JOB_ID=(\d+)", out)
        if not m:
            raise RuntimeError(f"oarsub printed no job id: {out.strip()}")
        return int(m[1])

    def status(self, job: int) -> dict:
        """Full `oarstat -fj ID -J` record (state, assigned_network_address, startTime, ...)."""
        data = json.loads(self._call(["oarstat", "-fj", str(job), "-J"]) or "{}")
        return data.get(str(job)) or next(iter(data.values()), {})

    def job(self, site: str, job: int) -> Job:
        return _job(site, job, self.status(job))

    def jobs(self) -> dict[str, dict]:
        """Active jobs (`oarstat -J` prints nothing when there is none)."""
        return json.loads(self._call(["oarstat", "-J"]).strip() or "{}")

    def live(self, site: str, name: str) -> list[Job]:
        found = [self.job(site, int(job)) for job, st in self.jobs().items() if st.get("name") == name]
        return sorted((j for j in found if j.live and j.site == site), key=lambda j: j.id)

    def on_site(self, site: str) -> list[Job]:
        found = (self.job(site, int(job)) for job in self.jobs())
        return sorted((j for j in found if j.live and j.site == site), key=lambda j: j.id)

    def delete(self, site: str, *jobs: int) -> None:
        if jobs:
            self.run(["oardel", *map(str, jobs)])

    def extend(self, site: str, job: int, seconds: int) -> None:
        self._call(["oarwalltime", str(job), "+" + format_walltime(seconds)])

    def down(self, site: str) -> dict[str, str]:
        """From `oarnodes -J` (one record per OAR resource)."""
        resources = json.loads(self._call(["oarnodes", "-J"]).strip() or "{}").values()
        return {r["network_address"]: r["state"].lower() for r in resources
                if r.get("site") == site and r.get("state") != "Alive"}


def _job(site: str, job: int, st: dict) -> Job:
    """A job from its oarstat record; its site is its nodes' (or its `site=` property's)."""
    hosts = st.get("assigned_network_address") or []
    asked = re.search(r"site='([\w-]+)'", st.get("properties") or "")
    site = hosts[0].split(".")[1] if hosts and "." in hosts[0] else asked[1] if asked else site
    return Job(site, job, (st.get("state") or "unknown").lower(), st.get("name") or "",
               sorted(set(st.get("assigned_network_address") or [])), _unix(st.get("startTime")),
               int(st.get("walltime") or 0), tuple(st.get("types") or ()))
