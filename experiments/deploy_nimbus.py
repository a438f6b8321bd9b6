"""deploy-nimbus: one Nimbus-style cloud per site (thesis §3.4), configured in parallel.

Rows, one per node and stage: reserve, deploy, ship (the cookbook bundle, one chain to all
nodes), configure (the node's converge), upload (the image into each repository), verify
(boto3 DescribeImages); plus the frontend's `image` (guest image build, cached):
  site, node, role (service|vmm|frontend), stage, start, end (epoch s), duration_s,
  outcome (ok|failed), error, changed (resources a converge changed), images (verify)
The clouds file (endpoints, credentials) is written to $G5KDEPLOY_HOME/nimbus/clouds.json."""
from __future__ import annotations

import json
import time
from pathlib import Path

from g5kdeploy import HOME
from g5kdeploy.engine import stage
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus import deploy
from g5kdeploy.nimbus.config import PROPAGATION_MODES
from g5kdeploy.results import Run
from g5kdeploy.testbed import Testbed
from g5kdeploy.vm import image as vm_image

NAME = "deploy-nimbus"
PARAMS = {"sites": ["rennes", "nancy"], "vmms_per_site": 1, "vmm_memory_mb": 512, "propagation": "qcow",
          "image": "debian", "image_size_mb": 32, "payload": None, "walltime": "2:00", "runner": "itamae"}
CLOUDS = HOME / "nimbus" / "clouds.json"


def check(description, sites, vmms_per_site=1, propagation="qcow", image_size_mb=32, payload=None, **_) -> list[str]:
    """The sites, checked before anything is reserved or torn down (UserError if bad)."""
    sites = sites.split(",") if isinstance(sites, str) else list(sites)
    if unknown := [s for s in sites if s not in description.sites]:
        raise UserError(f"unknown site {', '.join(unknown)}: the testbed has {', '.join(description.sites)}")
    if propagation not in PROPAGATION_MODES:
        raise UserError(f"unknown propagation {propagation!r}: use one of {', '.join(PROPAGATION_MODES)}")
    if min(_vmms(vmms_per_site, s) for s in sites) < 1:
        raise UserError("vmms_per_site must be at least 1 (a number, or {site: number})")
    vm_image.check(int(image_size_mb), payload and Path(payload))
    return sites


def main(run: Run, testbed: Testbed, sites, vmms_per_site, vmm_memory_mb, propagation, image, image_size_mb,
         payload, walltime, runner) -> dict:
    sites = check(testbed.description, sites, vmms_per_site, propagation, image_size_mb, payload)
    t0 = time.time()
    with stage(run, "reserve"):
        res = testbed.reserve({s: 1 + _vmms(vmms_per_site, s) for s in sites}, walltime, name="nimbus")
    try:
        clouds = build(run, testbed, res, t0, vmm_memory_mb, propagation, image, image_size_mb, payload, runner)
    except BaseException:     # failed or interrupted (Ctrl-C): give the nodes back
        testbed.release(res)
        raise
    deploy.write_clouds(CLOUDS, clouds)
    return clouds


def build(run: Run, testbed: Testbed, res, reserved_at: float, vmm_memory_mb=512, propagation="qcow",
          image="debian", image_size_mb=32, payload=None, runner="itamae", **columns) -> dict:
    """Deploy, converge and check one cloud per site of the reservation; its rows (with
    `columns` added); returns the clouds' client information. Also writes the run's clouds.json
    (without secrets)."""
    plans = deploy.plan(res.nodes, testbed.description)
    rows = Rows(run, plans, columns)
    rows.add_all(res.nodes, "reserve", reserved_at, time.time())
    t = time.time()
    with stage(run, "deploy"):
        outcomes = testbed.deploy(res.nodes)
    for host, o in outcomes.items():
        rows.add(host, "deploy", t, t + o.duration_s, o.ok, o.error)
    rows.fail_if("deployment")
    with stage(run, "configure"):
        t = time.time()
        guest = vm_image.build(size_mb=int(image_size_mb), payload=payload and Path(payload))
        rows.add("frontend", "image", t, time.time(), True)
        converged = deploy.configure(plans, guest, CLOUDS.parent, int(vmm_memory_mb), propagation, runner,
                                     run.dir / "logs")
        for c in converged:
            rows.add(c.host, "ship", c.ship_start, c.ship_end, c.shipped, "" if c.shipped else c.error)
            if c.shipped:
                rows.add(c.host, "configure", c.start, c.end, c.ok, c.error, changed=c.changed)
        t = time.time()
        for r in deploy.upload_image(plans, guest, image):
            rows.add(r.host, "upload", t, t + r.duration_s, r.ok, r.error)
    rows.fail_if("configuration")
    clouds = {p.site: p.client_info(res.jobs) for p in plans}
    with stage(run, "verify"):
        for p in plans:
            t = time.time()
            images = deploy.verify(clouds[p.site])
            rows.add(p.service.hostname, "verify", t, time.time(), image in images, images=",".join(images))
    rows.fail_if("verification")
    (run.dir / "clouds.json").write_text(json.dumps(
        {s: {k: v for k, v in c.items() if k != "secret_key"} for s, c in clouds.items()}, indent=2))
    return clouds


class Rows:
    """The run's rows, one per node and stage, with each node's site and role."""

    def __init__(self, run: Run, plans, columns: dict | None = None):
        self.run, self.failed, self.columns = run, [], columns or {}
        self.where = {"frontend": ("", "frontend")}
        for p in plans:
            self.where[p.service.hostname] = (p.site, "service")
            self.where.update({v.hostname: (p.site, "vmm") for v in p.vmms})

    def add(self, host: str, stage_name: str, start: float, end: float, ok: bool, error: str = "", **extra) -> None:
        site, role = self.where[host]
        outcome = "ok" if ok else "failed"
        self.run.row(**self.columns, site=site, node=host, role=role, stage=stage_name, start=round(start, 3),
                     end=round(end, 3), duration_s=round(end - start, 3), outcome=outcome, error=error or "", **extra)
        self.run.event(stage_name, "start", host, t=start)
        self.run.event(stage_name, "end", host, t=end, duration_s=round(end - start, 3), status=outcome)
        if not ok:
            self.failed.append(f"{host} ({stage_name}): {error}")

    def add_all(self, nodes, stage_name: str, start: float, end: float) -> None:
        for n in nodes:
            self.add(n.hostname, stage_name, start, end, True)

    def fail_if(self, what: str) -> None:
        if self.failed:
            raise RuntimeError(f"{what} failed on " + "; ".join(self.failed))


def _vmms(vmms_per_site, site: str) -> int:
    return int(vmms_per_site.get(site, 1) if isinstance(vmms_per_site, dict) else vmms_per_site)


def summary(rows) -> list[str]:
    by_stage = rows.groupby("stage", sort=False)["duration_s"].agg(["median", "max"])
    lines = [f"{s:10} median {r['median']:6.2f} s  max {r['max']:6.2f} s" for s, r in by_stage.iterrows()]
    total = rows["end"].max() - rows["start"].min()
    return lines + [f"total {total:.1f} s for {rows.loc[rows.role != 'frontend', 'node'].nunique()} nodes, "
                    f"{(rows['outcome'] == 'ok').mean():.0%} of node stages ok"]


def figures(df, outdir) -> list:
    """The deployment timeline: one bar per node and stage (the thesis' Gantt view)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nodes = sorted(df["node"].unique(), key=lambda n: (df.loc[df.node == n, "site"].iloc[0], n))
    colors = {"reserve": "tab:gray", "deploy": "tab:blue", "image": "tab:purple", "ship": "tab:olive",
              "configure": "tab:orange", "upload": "tab:cyan", "verify": "tab:green"}
    t0 = df["start"].min()
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(nodes) + 1.2))
    for y, node in enumerate(nodes):
        for _, r in df[df.node == node].iterrows():
            ax.barh(y, r["end"] - r["start"], left=r["start"] - t0, color=colors.get(r["stage"], "black"),
                    hatch="//" if r["outcome"] != "ok" else None)
    ax.set_yticks(range(len(nodes)), [f"{n.split('.')[0]} ({df.loc[df.node == n, 'role'].iloc[0]})" for n in nodes],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="time since reserve (s)", title="deploy-nimbus timeline")
    ax.legend(handles=[matplotlib.patches.Patch(color=c, label=s) for s, c in colors.items()], fontsize=7,
              loc="lower right")
    fig.tight_layout()
    path = outdir / "deploy-nimbus.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
