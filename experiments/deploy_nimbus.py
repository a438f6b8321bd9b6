"""deploy-nimbus: one Nimbus-style cloud per site (thesis §3.4), configured in parallel.

Rows, one per node and stage (reserve, deploy, configure, verify):
  site, node, role (service|vmm), stage, start, end (epoch s), duration_s, outcome (ok|failed),
  changed (resources the configuration changed), error
The clouds file (endpoints, credentials) is written to $G5KDEPLOY_HOME/nimbus/clouds.json."""
from __future__ import annotations

import time
from pathlib import Path

from g5kdeploy.engine import stage
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus import deploy
from g5kdeploy.nimbus.config import PROPAGATION_MODES
from g5kdeploy.results import Run
from g5kdeploy.testbed import Testbed
from g5kdeploy.vm import image as vm_image

NAME = "deploy-nimbus"
PARAMS = {"sites": ["rennes", "nancy"], "vmms_per_site": 1, "vmm_memory_mb": 512, "propagation": "qcow",
          "image": "debian", "image_size_mb": 32, "walltime": "2:00", "runner": "itamae"}
HOME = Path(__import__("os").environ.get("G5KDEPLOY_HOME", "/var/tmp/g5kdeploy"))
CLOUDS = HOME / "nimbus" / "clouds.json"


def check(description, sites, vmms_per_site=1, propagation="qcow", **_) -> list[str]:
    """The sites, checked before anything is reserved or torn down (UserError if bad)."""
    sites = sites.split(",") if isinstance(sites, str) else list(sites)
    if unknown := [s for s in sites if s not in description.sites]:
        raise UserError(f"unknown site {', '.join(unknown)}: the testbed has {', '.join(description.sites)}")
    if propagation not in PROPAGATION_MODES:
        raise UserError(f"unknown propagation {propagation!r}: use one of {', '.join(PROPAGATION_MODES)}")
    if min(_vmms(vmms_per_site, s) for s in sites) < 1:
        raise UserError("vmms_per_site must be at least 1 (a number, or {site: number})")
    return sites


def main(run: Run, testbed: Testbed, sites, vmms_per_site, vmm_memory_mb, propagation, image, image_size_mb,
         walltime, runner) -> dict:
    sites = check(testbed.description, sites, vmms_per_site, propagation)
    role_of: dict[str, str] = {}

    t0 = time.time()
    with stage(run, "reserve"):
        res = testbed.reserve({s: 1 + _vmms(vmms_per_site, s) for s in sites}, walltime, name="nimbus")
    by_name = {n.hostname: n for n in res.nodes}
    plans = deploy.plan(res.nodes, testbed.description)
    for p in plans:
        role_of[p.service.hostname] = "service"
        role_of.update({v.hostname: "vmm" for v in p.vmms})
    t1 = time.time()
    for n in res.nodes:
        _row(run, n, role_of, "reserve", t0, t1, True)
    with stage(run, "deploy", res.nodes):
        outcomes = testbed.deploy(res.nodes)
    for host, o in outcomes.items():
        _row(run, by_name[host], role_of, "deploy", t1, t1 + o.duration_s, o.ok, error=o.error)
    if bad := [h for h, o in outcomes.items() if not o.ok]:
        raise RuntimeError(f"deployment failed on {', '.join(bad)}")
    with stage(run, "configure", res.nodes):
        guest = vm_image.build(HOME / "cache", size_mb=int(image_size_mb))
        converged = deploy.configure(plans, guest, CLOUDS.parent, int(vmm_memory_mb), propagation, runner, run.dir / "logs")
        uploaded = deploy.upload_image(plans, guest, image)
    for c in converged:
        _row(run, by_name[c.host], role_of, "configure", c.start, c.end, c.ok, changed=c.changed, error=c.error)
    failed = [f"{c.host}: {c.error}" for c in converged if not c.ok] + [f"{r.host}: image upload: {r.error}"
                                                                      for r in uploaded.failed]
    if failed:
        raise RuntimeError("configuration failed on " + "; ".join(failed))
    clouds = {p.site: p.client_info(res.jobs) for p in plans}
    with stage(run, "verify"):
        for p in plans:
            t = time.time()
            images = deploy.verify(clouds[p.site])
            _row(run, p.service, role_of, "verify", t, time.time(), image in images, images=",".join(images))
    deploy.write_clouds(CLOUDS, clouds)
    (run.dir / "clouds.json").write_text(__import__("json").dumps(
        {s: {k: v for k, v in c.items() if k != "secret_key"} for s, c in clouds.items()}, indent=2))
    return clouds


def _vmms(vmms_per_site, site: str) -> int:
    return int(vmms_per_site.get(site, 1) if isinstance(vmms_per_site, dict) else vmms_per_site)


def _row(run: Run, node, role_of, stage_name, start, end, ok, error="", **extra) -> None:
    run.row(site=node.site, node=node.hostname, role=role_of.get(node.hostname, ""), stage=stage_name,
            start=round(start, 3), end=round(end, 3), duration_s=round(end - start, 3),
            outcome="ok" if ok else "failed", error=error or "", **extra)


def summary(rows) -> list[str]:
    by_stage = rows.groupby("stage", sort=False)["duration_s"].agg(["median", "max"])
    lines = [f"{s:10} median {r['median']:6.2f} s  max {r['max']:6.2f} s" for s, r in by_stage.iterrows()]
    total = rows["end"].max() - rows["start"].min()
    return lines + [f"total {total:.1f} s for {rows['node'].nunique()} nodes, "
                    f"{(rows['outcome'] == 'ok').mean():.0%} of node stages ok"]
