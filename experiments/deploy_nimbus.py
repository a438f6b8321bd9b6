"""deploy-nimbus: one Nimbus-style cloud per site (thesis §3.4), configured in parallel.

Rows, one per node and stage: reserve, deploy, ship (the cookbook bundle, by parallel scp
to every node), configure (the node's converge), upload (the image into each repository),
verify (boto3 DescribeImages); plus the frontend's `image` (guest images built, cached):
  site, node, role (service|vmm|frontend), stage, start, end (epoch s), duration_s,
  outcome (ok|failed), error, changed (resources a converge changed), images (verify)
The clouds outlive the run (their OAR jobs are kept; `invoke nimbus-destroy` ends them);
their endpoints and credentials are written to $G5KDEPLOY_HOME/nimbus/clouds.json. With
`futuregrid`, the FutureGrid sites' clouds (testbed-up's) take every node of their sites and
no OAR job, and stay in the clouds file through later deployments."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from g5kdeploy.engine import Experiment, param, reserved, stage
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus import deploy
from g5kdeploy.nimbus.config import PROPAGATION_MODES
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.testbed import NodeSet, Reservation, Testbed
from g5kdeploy.vm import debian, image as vm_image


@dataclass(frozen=True)
class Params:
    sites: list[str] = param(["rennes", "nancy"], "one cloud per site")
    vmms_per_site: int | dict[str, int] = param(1, "VMM nodes per cloud (a number, or {site: number})")
    vmm_memory_mb: int = param(512, "guest memory each VMM offers")
    propagation: str = param("qcow", "default image propagation: " + ", ".join(PROPAGATION_MODES))
    image: str = param(vm_image.NAME, "the id the busybox guest image is registered under in every cloud")
    guests: list[str] = param(["debian"], "Debian guest images registered beside it: " + ", ".join(debian.ROLES))
    image_size_mb: int = param(32, "size of the guest disk image")
    payload: str | None = param(None, "a file to put in the guest image")
    walltime: str = param("2:00", "OAR walltime, H:MM")
    runner: str = param("itamae", "what converges the cookbooks (itamae, chef-solo)")
    futuregrid: bool = param(False, "deploy the FutureGrid sites' own clouds on all their nodes, with no OAR "
                                    "job (testbed-up does it; they stay up until testbed-destroy)")


def vmms(p: Params, site: str) -> int:
    return p.vmms_per_site.get(site, 1) if isinstance(p.vmms_per_site, dict) else p.vmms_per_site


class DeployNimbus(Experiment):
    name = "deploy-nimbus"
    Params = Params
    job_name = "nimbus"         # the clouds' jobs, whatever deployed them

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        if p.futuregrid:                 # nothing reserved: the FutureGrid sites' nodes are the testbed's
            return {}
        return {s: 1 + vmms(p, s) for s in p.sites}                                 # a service node + VMMs

    def validate(self, p: Params, testbed: Testbed) -> None:
        self.known_sites(testbed, p.sites)
        sites = testbed.description.sites
        for s in p.sites:
            if (sites[s].kind == "futuregrid") != p.futuregrid:
                raise UserError(f"site {s} is a FutureGrid cloud, up since testbed-up: use it as it is (the clouds "
                                f"file), or leave it out of sites" if not p.futuregrid else
                                f"site {s} is not a FutureGrid site: futuregrid deploys those only")
            if p.futuregrid and sites[s].size < 2:
                raise UserError(f"FutureGrid site {s} needs at least 2 nodes (a service node and a VMM)")
        self.one_of("propagation", p.propagation, PROPAGATION_MODES)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", p.image):       # it names a file in each repository
            raise UserError(f"image {p.image[:80]!r}: name it with lowercase letters, digits, '.', '_' or '-'")
        if not p.sites or min(vmms(p, s) for s in p.sites) < 1:
            raise UserError("vmms_per_site must be at least 1 (a number, or {site: number}) and sites not empty")
        vm_image.check(p.image_size_mb, p.payload and Path(p.payload))
        for g in p.guests:
            debian.packages(g)
        if p.image in p.guests:
            raise UserError(f"image {p.image!r} is also a Debian guest's name: give the busybox image another")

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        t0 = time.time()
        if p.futuregrid:                       # the testbed's own nodes: no OAR job
            res = Reservation({}, NodeSet(n for n in testbed.nodes() if n.site in p.sites), datetime.max, "futuregrid")
            clouds = self._build(run, testbed, res, t0, p)
        else:
            with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name,
                          keep=True) as res:                                         # kept: the clouds stay
                clouds = self._build(run, testbed, res, t0, p)
        deploy.write_clouds(deploy.CLOUDS, {**deploy.kept(deploy.CLOUDS), **clouds})

    @staticmethod
    def _build(run: Run, testbed: Testbed, res: Reservation, t0: float, p: Params) -> dict:
        return deploy.build(run, testbed, res, t0, stage, p.vmm_memory_mb, p.propagation, p.image,
                            p.image_size_mb, p.payload and Path(p.payload), p.runner, guests=tuple(p.guests))

    def summary(self, rows) -> list[str]:
        by_stage = rows.groupby("stage", sort=False)["duration_s"].agg(["median", "max"])
        lines = [f"{s:10} median {r['median']:6.2f} s  max {r['max']:6.2f} s" for s, r in by_stage.iterrows()]
        total = rows["end"].max() - rows["start"].min()
        return lines + [f"total {total:.1f} s for {rows.loc[rows.role != 'frontend', 'node'].nunique()} nodes, "
                        f"{(rows['outcome'] == 'ok').mean():.0%} of node stages ok"]


    def figures(self, df, outdir) -> list:
        """The deployment timeline: one bar per node and stage (the thesis' Gantt view)."""
        plt = pyplot()
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
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(color=c, label=s) for s, c in colors.items()], fontsize=7,
                  loc="lower right")
        path = save_figure(fig, outdir / "deploy-nimbus.png")
        return [path]


EXPERIMENT = DeployNimbus()
