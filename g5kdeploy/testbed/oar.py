"""OAR through its command-line tools (oarsub, oarstat -J, oardel), wherever they run:
locally as the testbed user, or on a Grid'5000 frontend over ssh."""
from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from g5kdeploy.errors import UserError
from g5kdeploy.testbed.model import format_walltime

Runner = Callable[[list[str]], subprocess.CompletedProcess]
FINAL = ("Terminated", "Error")


@dataclass
class Oar:
    run: Runner

    def _call(self, argv: list[str]) -> str:
        p = self.run(argv)
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).strip().splitlines()
            raise UserError(f"{argv[0]} failed: {msg[-1] if msg else 'exit ' + str(p.returncode)}")
        return p.stdout

    def submit(self, nodes: int, walltime_s: int, name: str, command: str,
               properties: str | None = None, types: tuple[str, ...] = ()) -> int:
        argv = ["oarsub", "-n", name, "-l", f"nodes={nodes},walltime={format_walltime(walltime_s)}"]
        if properties:
            argv += ["-p", properties]
        for t in types:
            argv += ["-t", t]
        out = self._call(argv + [command])
        m = re.search(r"OAR_JOB_ID=(\d+)", out)
        if not m:
            raise RuntimeError(f"oarsub printed no job id: {out.strip()}")
        return int(m[1])

    def status(self, job: int) -> dict:
        """Full `oarstat -fj ID -J` record (state, assigned_network_address, startTime, ...)."""
        data = json.loads(self._call(["oarstat", "-fj", str(job), "-J"]) or "{}")
        return data.get(str(job)) or next(iter(data.values()), {})

    def jobs(self) -> dict[str, dict]:
        """Active jobs (`oarstat -J` prints nothing when there is none)."""
        return json.loads(self._call(["oarstat", "-J"]).strip() or "{}")

    def delete(self, *jobs: int) -> None:
        if jobs:
            self.run(["oardel", *map(str, jobs)])

    def wait(self, jobs: list[int], states=("Running",), timeout: float = 300,
             tick: Callable[[dict], None] | None = None) -> dict[int, dict]:
        """Poll until every job is in one of `states`; a job ending early is an error."""
        deadline = time.monotonic() + timeout
        while True:
            st = {j: self.status(j) for j in jobs}
            if tick:
                tick(st)
            if all(s.get("state") in states for s in st.values()):
                return st
            for j, s in st.items():
                if s.get("state") in FINAL and s.get("state") not in states:
                    raise UserError(f"OAR job {j} ended ({s.get('state')}) before running: see oarstat -fj {j}")
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{j}:{s.get('state')}" for j, s in st.items())
                raise UserError(f"OAR jobs not running after {timeout:.0f} s ({waiting}): nodes busy? see oarstat")
            time.sleep(0.5)
