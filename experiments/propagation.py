"""propagation: VM image propagation in a site's cloud (thesis §3.5, Fig 3.6, Table 3.1):
SCP vs broadcast chain vs pre-propagated copy-on-write vs both, against the wire limit.

One cloud on `site`: a service node holding the repository and ceil(max N / vms_per_vmm)
VMMs. The image is a bootable guest of image_size_mb MiB whose free space holds a seeded
random payload (incompressible). For each repeat, N and method: one RunInstances of N
guests, timed until every guest is running and contextualized, then all are terminated.
`qcow` is measured with the image pre-propagated into every VMM's cache (thesis §3.5.2);
`chain+qcow` starts with empty caches (attempt 1, cache=cold) and is asked again (attempt
2, cache=warm: §3.5.4, the cache is hit). The site's LAN is shaped at lan_rate during the
run (restored after): this machine's 2 cores carry every emulated VMM, so 16 VMMs forwarding
the chain at 1 Gbit/s each exceed what they can compute (the chain then measures the CPU,
not the wire); at 250 Mbit/s they do not. None keeps the testbed's own rate. Needs the
testbed's configured rates (the models) and link shaping when lan_rate is set.

Rows, by `level`:
  request: method, n_vms, repeat, attempt, cache (none|cold|warm), outcome (ok|failed), error,
    total_s (RunInstances -> every guest contextualized), propagation_s (propagation start ->
    the last VMM's copy checked), repository_tx_bytes (the repository node's NIC, headers
    included), image_bytes, lan_mbit, chunk_bytes, model_scp_s (N·S/B, Table 3.1's model),
    wire_limit_s (S/B + (N-1)·c/B, the pipelined chain), instantiation_s, volume_s and boot_s
    (medians over the guests), disk_bytes (on the VMMs' disks, summed)
  vm (with its request's columns): id, vmm, state, error, propagated_s (since the request), instantiation_s (copy checked -> QEMU
    running: ssh, volume, tap, QEMU), volume_s (creating the guest's disk), boot_s (QEMU
    running -> contextualized, all peers known), ready_s (since the request)
  vmm (with its request's columns): vmm, completion_s (since the propagation start), bytes (received), cache_lookup (hit|miss),
    disk_bytes (allocated by the guests' disks, and by the image cache for the qcow methods)
  prepropagation: before `qcow` requests, filling the caches: n_filled, time_s, bytes
  deploy: the cloud's deployment stages (as deploy-nimbus)"""
from __future__ import annotations

import math
import statistics
import time

from dataclasses import dataclass

from g5kdeploy import remote
from g5kdeploy.engine import Experiment, param, reserved, stage, sweep
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus import chain, deploy
from g5kdeploy.nimbus.config import INSTANCE_TYPES, PROPAGATION_MODES
from g5kdeploy.nimbus.propagation import CACHE, INCOMING
from g5kdeploy.progress import console
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.testbed import Feature, Testbed
from g5kdeploy.testbed.description import parse_rate
from g5kdeploy.vm import image as vm_image
from g5kdeploy.vm.qemu import VMS

IMAGE = vm_image.NAME
PROPAGATION = "g5kdeploy.nimbus.propagation"     # the cloud's module run on its service node


@dataclass(frozen=True)
class Params:
    site: str = param("rennes", "the site whose cloud is measured")
    methods: list[str] = param(list(PROPAGATION_MODES), ", ".join(PROPAGATION_MODES))
    vm_counts: list[int] = param([1, 2, 4, 8, 16], "guests per request (N)")
    vms_per_vmm: int = param(1, "guests per VMM node")
    image_size_mb: int = param(256, "size of the guest image (random payload inside)")
    lan_rate: str | None = param("250mbit", "the site's LAN rate during the run (null: the testbed's)")
    instance_type: str = param("m1.tiny", ", ".join(INSTANCE_TYPES))
    repeats: int = param(1, "repeats of the grid")
    timeout_s: float = param(600.0, "seconds a request may take to be running")
    walltime: str = param("2:00", "OAR walltime, H:MM")
    runner: str = param("itamae", "what converges the cookbooks (itamae, chef-solo)")
    FULL = {"repeats": 3}
# Thesis Table 3.1: a 5 GB image over 125 MB/s, N copies from one repository.
THESIS_TABLE_3_1 = {1: "41 s", 2: "1 min 22 s", 4: "2 min 44 s", 8: "5 min 28 s", 16: "10 min 55 s",
                    32: "21 min 51 s", 64: "43 min 41 s", 128: "1 h 27 min 23 s", 256: "2 h 54 min 46 s",
                    512: "5 h 49 min 32 s", 1024: "11 h 39 min 3 s"}


def scp_model_s(n: int, size_bytes: float, rate_bytes_s: float) -> float:
    """Thesis Table 3.1: N copies sent by the repository, one after the other on its link."""
    return n * size_bytes / rate_bytes_s


def wire_limit_s(n: int, size_bytes: float, rate_bytes_s: float, chunk: int = chain.CHUNK) -> float:
    """A pipelined chain: the image once over a link, plus one chunk's delay per extra hop."""
    return size_bytes / rate_bytes_s + (n - 1) * chunk / rate_bytes_s


def duration(seconds: float) -> str:
    """1 h 27 min 23 s, as the thesis writes."""
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return " ".join(f"{v} {u}" for v, u in ((h, "h"), (m, "min"), (s, "s")) if v or (u == "s" and not h and not m))


def table_3_1(counts=tuple(THESIS_TABLE_3_1), size_mb: float = 5 * 1024, rate_mb_s: float = 125):
    """The SCP model for 1..1024 VMs (5 GB at 125 MB/s; the thesis counts 1 GB = 1024 MB), beside
    the thesis's own numbers."""
    import pandas as pd
    rows = [{"n_vms": n, "model_s": round(scp_model_s(n, size_mb, rate_mb_s), 2),
             "model": duration(scp_model_s(n, size_mb, rate_mb_s)), "thesis": THESIS_TABLE_3_1.get(n, "")}
            for n in counts]
    df = pd.DataFrame(rows)
    df["matches"] = df["model"] == df["thesis"]
    return df


def points(p: Params) -> list[dict]:
    """The sweep: every (repeat, N, method)."""
    return [dict(repeat=r, n_vms=n, method=m) for r in range(p.repeats) for n in p.vm_counts for m in p.methods]


def attempts(point: dict) -> list[dict]:
    """A point's requests: chain+qcow is asked twice (cold, then warm cache), in one point so
    that a resumed sweep never measures a warm request without its cold one."""
    m = point["method"]
    tries = [("cold", 1), ("warm", 2)] if m == "chain+qcow" else [("warm", 1)] if m == "qcow" else [("none", 1)]
    return [dict(point, cache=c, attempt=a) for c, a in tries]


def _vmm_count(p: Params) -> int:
    return math.ceil(max(p.vm_counts) / p.vms_per_vmm)


class Propagation(Experiment):
    name = "propagation"
    Params = Params

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        return {p.site: 1 + _vmm_count(p)}                                   # the service node + VMMs

    def needs(self, p: Params) -> set:
        return {Feature.RATES} | ({Feature.SHAPING} if p.lan_rate else set())

    def validate(self, p: Params, testbed: Testbed) -> None:
        self.known_sites(testbed, [p.site])
        self.one_of("method", p.methods, PROPAGATION_MODES)
        self.one_of("instance type", p.instance_type, INSTANCE_TYPES)
        if not p.vm_counts or min(p.vm_counts) < 1:
            raise UserError("vm_counts must be a list of numbers of VMs, each at least 1")
        if p.vms_per_vmm < 1:
            raise UserError("vms_per_vmm must be at least 1")
        if p.lan_rate is not None:
            parse_rate(p.lan_rate, "lan_rate")
        vm_image.check(p.image_size_mb)
        free = testbed.description.sites[p.site].size
        need = 1 + _vmm_count(p)
        if need > free:
            raise UserError(f"{max(p.vm_counts)} VMs at {p.vms_per_vmm} per VMM need {need} nodes on {p.site}, "
                            f"which has {free}: lower vm_counts, raise vms_per_vmm or use a larger testbed")

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        site, size_mb = p.site, p.image_size_mb
        memory = INSTANCE_TYPES[p.instance_type]
        t0 = time.time()
        before = testbed.rates()["lan"].get(site)
        failures: list[str] = []
        with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name) as res:
            cloud = None
            try:
                payload = vm_image.random_payload(size_mb - max(16, size_mb // 8))
                cloud = deploy.build(run, testbed, res, t0, stage, vmm_memory_mb=memory * p.vms_per_vmm,
                                     image=IMAGE, image_size_mb=size_mb, payload=payload, runner=p.runner,
                                     level="deploy")[site]
                if p.lan_rate:
                    testbed.shape(site, site, p.lan_rate)
                rate = parse_rate(p.lan_rate) if p.lan_rate else testbed.rates()["lan"][site]
                image_bytes = vm_image.build(size_mb=size_mb, payload=payload).disk.stat().st_size

                def measure(point: dict) -> None:
                    for t in attempts(point):
                        if t["method"] == "qcow":
                            _prepropagate(run, cloud, t)
                        elif t["method"] == "chain+qcow" and t["cache"] == "cold":
                            remote.run(f"rm -f {CACHE}/*", cloud["vmms"])
                        failures.extend(_request(run, cloud, t, p, image_bytes, rate))

                sweep(run, points(p), measure, name=lambda q: f"request {q['method']} x{q['n_vms']}")
            finally:
                if cloud and (problem := deploy.terminate_all(cloud)):
                    console.print(f"[red]could not terminate every guest: {problem}")
                if p.lan_rate and before:
                    testbed.shape(site, site, f"{before}bit")
        if failures:
            raise RuntimeError("failed requests: " + "; ".join(failures))

    def summary(self, rows) -> list[str]:
        r = _series(rows)
        out = [] if not r.empty else ["no request was measured"]
        for (series, n), g in r.groupby(["series", "n_vms"]):
            m = g[["total_s", "propagation_s", "repository_tx_bytes", "image_bytes", "model_scp_s", "wire_limit_s",
                   "instantiation_s", "boot_s", "disk_bytes"]].median()
            line = (f"{series:18} x{n:<3} total {m.total_s:6.1f} s  propagation {m.propagation_s:6.2f} s  "
                    f"repository sent {m.repository_tx_bytes / m.image_bytes:5.2f} x image  "
                    f"instantiation {m.instantiation_s:5.2f} s  boot {m.boot_s:5.1f} s  "
                    f"disk {m.disk_bytes / n / 2**20:6.1f} MiB/VM")
            if series == "scp":
                line += f"  | vs model N*S/B {m.propagation_s / m.model_scp_s:.2f}"
            elif series.startswith("chain") and "warm" not in series:
                line += f"  | vs wire limit {m.propagation_s / m.wire_limit_s:.2f}"
            out.append(line)
        chain_rows = r[r.series == "chain"].groupby("n_vms")["propagation_s"].median()
        if len(chain_rows) > 1:
            out.append(f"chain T({chain_rows.index.max():.0f})/T({chain_rows.index.min():.0f}) = "
                       f"{chain_rows.iloc[-1] / chain_rows.iloc[0]:.2f}")
        t = table_3_1()
        out.append(f"Table 3.1 model (5 GB, 125 MB/s): {int(t.matches.sum())}/{len(t)} rows equal to the thesis's")
        ok = r["outcome"] == "ok"
        return out + [f"{int(ok.sum())}/{len(ok)} requests had every guest running and contextualized"]


    def figures(self, df, outdir) -> list:
        """Fig 3.6 redrawn: (a) time until every guest is running and contextualized, (b)
        propagation time (log scale: pre-propagated and cached requests take ~10 ms) with the models dashed (SCP N·S/B, the chain's wire limit), vs N; and
        the Table 3.1 model against the thesis (csv)."""
        plt = pyplot()
        table = table_3_1()
        table.to_csv(outdir / "table-3.1.csv", index=False)
        paths = [outdir / "table-3.1.csv"]
        r = _series(df)
        if r.empty:
            return paths
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        colors = dict(zip(sorted(r.series.unique()), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        for ax, column, title in ((axes[0], "total_s", "(a) RunInstances to all contextualized"),
                                  (axes[1], "propagation_s", "(b) propagation (log scale)")):
            for series, g in r.groupby("series"):
                m = g.groupby("n_vms")[column].median()
                ax.plot(m.index, m.values, "o-", color=colors[series], label=series)
            ax.set(xscale="log", xlabel="number of VMs", ylabel="time (s)", title=title)
            ax.set_xticks(sorted(r.n_vms.unique()), [str(n) for n in sorted(r.n_vms.unique())])
        models = r.groupby("n_vms")[["model_scp_s", "wire_limit_s"]].median()
        axes[1].plot(models.index, models.model_scp_s, "--", color=colors.get("scp", "gray"), label="SCP model N·S/B")
        axes[1].plot(models.index, models.wire_limit_s, "--", color=colors.get("chain", "black"),
                     label="chain wire limit S/B+(N-1)c/B")
        axes[1].set_yscale("log")
        axes[1].legend(fontsize=7)
        rate, size = r.lan_mbit.iloc[0], r.image_bytes.iloc[0] / 2**20
        fig.suptitle(f"Propagation of a {size:.0f} MiB image, {rate:.0f} Mbit/s LAN (thesis Fig 3.6)")
        save_figure(fig, outdir / "fig-3.6-propagation.png")
        return [outdir / "fig-3.6-propagation.png"] + paths


def _prepropagate(run: Run, cloud: dict, t: dict) -> None:
    t0 = time.time()
    filled = [d for d in remote.run_module(cloud["service"], PROPAGATION, "prepropagate", IMAGE)
              if d["cache"] == "miss"]
    run.row(level="prepropagation", repeat=t["repeat"], n_vms=t["n_vms"], method=t["method"], n_filled=len(filled),
            time_s=round(time.time() - t0, 3), bytes=sum(d["bytes"] for d in filled))


def _tx_bytes(host: str) -> int:
    return int(remote.run("cat /sys/class/net/eth0/statistics/tx_bytes", [host])[0].stdout)


def _disk_bytes(hosts: list[str], cache: bool) -> dict[str, int]:
    """Bytes allocated on each VMM's disk by the guests' disks (not their RAM), plus the
    image cache when the method uses it (§3.5.4's storage accounting)."""
    files = f"{INCOMING}/* {VMS}/*/disk.*" + (f" {CACHE}/*.img" if cache else "")
    out = remote.run(f"du -cB1 {files} 2>/dev/null | tail -1 | cut -f1", hosts)
    return {r.host: int(r.stdout.strip() or 0) for r in out}


def _wait_running(ec2, ids: list[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        guests = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]
        states = {i["State"]["Name"] for i in guests}
        if states <= {"running", "terminated"} and "pending" not in states or time.monotonic() > deadline:
            return guests
        time.sleep(0.3)


def _request(run: Run, cloud: dict, t: dict, p: Params, image_bytes: int, rate: int) -> list[str]:
    """One RunInstances of N guests, measured, then terminated; the failures."""
    ec2, n = deploy.client(cloud), t["n_vms"]
    b = rate / 8
    common = dict(t, lan_mbit=rate / 1e6, image_bytes=image_bytes, chunk_bytes=chain.CHUNK)
    tx0 = _tx_bytes(cloud["service"])
    r = ec2.run_instances(ImageId=IMAGE, MinCount=n, MaxCount=n, InstanceType=p.instance_type,
                          TagSpecifications=[{"ResourceType": "instance",
                                              "Tags": [{"Key": "propagation", "Value": t["method"]}]}])
    ids = [i["InstanceId"] for i in r["Instances"]]
    try:
        guests = _wait_running(ec2, ids, p.timeout_s)
        tx = _tx_bytes(cloud["service"]) - tx0
        records = remote.run_module(cloud["service"], "g5kdeploy.nimbus.store", *ids)
        disk = _disk_bytes(sorted({i["vmm"] for i in records}), cache="qcow" in t["method"])
    finally:
        ec2.terminate_instances(InstanceIds=ids)
    bad = [f"{g['InstanceId']}: {g['State']['Name']} {g.get('StateReason', {}).get('Message', '')}".strip()
           for g in guests if g["State"]["Name"] != "running"]
    vms = [dict(id=i["id"], vmm=i["vmm"], state=i["state"], error=i.get("error", ""),
                propagated_s=_seconds(i.get("requested_at"), i.get("propagated_at")),
                instantiation_s=_seconds(i.get("propagated_at"), i.get("started_at")), volume_s=i.get("volume_s"),
                boot_s=_seconds(i.get("started_at"), i.get("contextualized_at")),
                ready_s=_seconds(i.get("requested_at"), i.get("contextualized_at"))) for i in records]
    for v in vms:
        run.row(level="vm", **common, **v)
    start = min((i["propagation_started_at"] for i in records if i.get("propagation_started_at")), default=None)
    for host, i in sorted({i["vmm"]: i for i in records}.items()):
        run.row(level="vmm", **common, vmm=host, cache_lookup=i.get("cache", ""), bytes=i.get("propagation_bytes"),
                completion_s=_seconds(start, i.get("propagated_at")), disk_bytes=disk.get(host))
    propagated = max((i.get("propagated_at") or 0 for i in records), default=None)
    ready = None if bad else max(i.get("contextualized_at") or 0 for i in records)
    run.row(level="request", **common, outcome="failed" if bad else "ok", error="; ".join(bad),
            total_s=_seconds(records[0]["requested_at"], ready), propagation_s=_seconds(start, propagated),
            repository_tx_bytes=tx, model_scp_s=round(scp_model_s(n, image_bytes, b), 3),
            wire_limit_s=round(wire_limit_s(n, image_bytes, b), 3), disk_bytes=sum(disk.values()),
            **{k: _median(v[k] for v in vms) for k in ("instantiation_s", "volume_s", "boot_s")})
    return [f"{t['method']} x{n} (repeat {t['repeat']}, attempt {t['attempt']}): " + "; ".join(bad)] if bad else []


def _seconds(start: float | None, end: float | None) -> float | None:
    """From one timeline instant to another, when both are known."""
    return round(end - start, 3) if start and end else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _series(df):
    """Requests labelled by method, chain+qcow's second request apart (warm cache)."""
    r = df[df.level == "request"].copy() if "method" in df else df.iloc[0:0].assign(series=None)
    if r.empty:
        return r
    r["n_vms"] = r["n_vms"].astype(int)
    r["series"] = r["method"] + r["cache"].map({"cold": " (cold)", "warm": " (warm)"}).where(
        r["method"] == "chain+qcow", "")
    return r


EXPERIMENT = Propagation()
