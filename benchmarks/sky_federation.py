"""Sky BLASTx on the six clouds of `sky.toml` (three firewalled Grid'5000 sites, FutureGrid's
three behind NAT; thesis §3.6 Table 3.2 and §3.7), through ViNe, beside the same instances on
the same testbed with every site open and no overlay: the makespans side by side (the
overlay's cost to the application) and Table 3.2 for the 3 FutureGrid clouds and for all 6.
Each half brings its testbed up (`invoke testbed-up ... --guests debian-blast`), runs the
same grid, and destroys it; the hits must equal the sequential run's in every run. Under
TCG on this 2-core host, 7 guests share 2 cores: read the ratios, not the speedups."""
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from benchmarks import common
from experiments import blastx_sky
from g5kdeploy import engine
from g5kdeploy.results import load
from g5kdeploy.sky import platform as sky

FUTUREGRID, GRID5000 = ("sierra", "hotel", "foxtrot"), ("rennes", "lille", "sophia")
GRID = {"workers_on": "instances", "scheduler_site": "sierra", "proteins": 300, "queries": 240, "decoys": 60,
        "chunks": 24, "loss": None,
        "platforms": [{s: 1 for s in FUTUREGRID}, {s: 1 for s in GRID5000 + FUTUREGRID}],
        "elastic": {"start": {s: 1 for s in FUTUREGRID}, "add": {s: 1 for s in GRID5000}, "at_fraction": 0.25}}


def open_sky(into: Path) -> Path:
    """sky.toml with every site open (no firewall, no NAT), all else the same."""
    text = resources.files("g5kdeploy.testbed").joinpath("sky.toml").read_text()
    text = re.sub(r'access = "\w+"', 'access = "open"', text)
    text = re.sub(r'(kind = "futuregrid")', r'\1\naccess = "open"', text)
    (into / "sky-open.toml").write_text(text)
    return into / "sky-open.toml"


def invoke(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "invoke", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed: {r.stderr.strip()[-500:]}")


def half(description: str, vine: str):
    """Bring the testbed up, run the grid, destroy it; the run's rows."""
    invoke("testbed-up", "--description", description, "--guests", sky.IMAGE)
    try:
        run = engine.execute(blastx_sky.EXPERIMENT, common.testbed(), {**GRID, "vine": vine})
        print(f"{description}: run {run.dir}")
        return load(run.dir)
    finally:
        invoke("testbed-destroy")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-") as tmp:
        halves = {"NAT + firewalls + ViNe": half("sky.toml", "on"), "open, no overlay": half(str(open_sky(Path(tmp))), "off")}
    runs = {}
    for name, df in halves.items():
        print(f"-- {name}")
        print("\n".join(blastx_sky.EXPERIMENT.summary(df)))
        r = df[df.level == "run"]
        runs[name] = r.set_index("platform").makespan_s
        assert r.hits_equal.all(), f"{name}: a hit table differs from the sequential run's"
    vine, direct = runs.values()
    for platform in vine.index:
        print(f"makespan {platform:45} ViNe {vine[platform]:7.1f} s, open {direct[platform]:7.1f} s: "
              f"ratio {vine[platform] / direct[platform]:.3f}")


if __name__ == "__main__":
    main()
