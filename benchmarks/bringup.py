"""Bring-up of the default testbed (rennes 18 nodes, nancy 8, OAR), cold and warm, and the time to
the first OAR job. Goals: cold <= 60 s, warm <= 10 s. Destroys any local testbed first.

cold: no keys, OAR database dropped, PostgreSQL stopped (a machine fresh from bootstrap)
warm: keys and packages in place, right after a destroy"""
import shutil
import statistics
import subprocess
import time

from g5kdeploy.testbed.local import DEFAULT_HOME, LocalTestbed, destroy
from g5kdeploy.testbed.local import oar_server

REPEATS = 3


def timed_up() -> tuple[float, float]:
    t0 = time.monotonic()
    tb = LocalTestbed.up()
    up = time.monotonic() - t0
    res = tb.reserve({"rennes": 8, "nancy": 8}, walltime="0:05", name="bench")
    first_job = time.monotonic() - t0 - up
    tb.release(res)
    return up, first_job


def make_cold() -> None:
    destroy()
    v = oar_server.pg_version()
    subprocess.run(["pg_ctlcluster", v, "main", "start"], check=True)
    subprocess.run(["oar-database", "--drop", "--db-is-local", "-y"], capture_output=True)
    subprocess.run(["pg_ctlcluster", v, "main", "stop"], check=True)
    shutil.rmtree(DEFAULT_HOME, ignore_errors=True)


def main() -> None:
    rows = {"cold": [], "warm": []}
    for _ in range(REPEATS):
        make_cold()
        rows["cold"].append(timed_up())
        destroy()
        rows["warm"].append(timed_up())
    destroy()
    for kind, goal in (("cold", 60), ("warm", 10)):
        ups = [u for u, _ in rows[kind]]
        jobs = [j for _, j in rows[kind]]
        med = statistics.median(ups)
        print(f"{kind:4} bring-up: median {med:5.1f} s over {REPEATS} (runs {', '.join(f'{u:.1f}' for u in ups)}); "
              f"goal {goal} s -> {med / goal:.0%} of goal; first 16-node OAR job after "
              f"{statistics.median(jobs):.1f} s")


if __name__ == "__main__":
    main()
