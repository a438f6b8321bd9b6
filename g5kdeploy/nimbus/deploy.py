"""The frontend side of deploy-nimbus: plan one cloud per site on reserved nodes, converge
the service and VMM roles on them in parallel, fill each repository, check each cloud answers
boto3, and write the clouds file (endpoints and credentials) that clients read. `build` does
all of it with one row per node and stage, for every experiment that needs clouds."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from g5kdeploy import HOME, chef, remote, work_dir
from g5kdeploy.files import write_atomic
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus.config import API_PORT, BROKER_PORT, CHAIN_PORT, CUMULUS_PORT, LIB
from g5kdeploy.testbed.model import Node, NodeSet, heads
from g5kdeploy.vm import debian, image as vm_image
from g5kdeploy.vm.image import GuestImage

REPOSITORY = str(LIB / "repository")
CLOUDS = HOME / "nimbus" / "clouds.json"      # endpoints and credentials of the clouds up
AWS_CONFIG = HOME / "nimbus" / "aws-config"   # the same, as AWS CLI profiles (one per cloud)
# a cloud's kind in the clouds file: grid5000 (deploy-nimbus's, on OAR jobs of the user's),
# futuregrid (the testbed's own, up since testbed-up), external (any EC2-compatible endpoint a
# user added: invoke cloud-add); the last two outlive the user's deployments
KEPT = ("futuregrid", "external")


@dataclass
class CloudPlan:
    site: str
    service: Node
    vmms: list[Node]
    pool: tuple[str, str]
    prefix: int
    gateway: str
    access_key: str = field(default_factory=lambda: "AKID" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))

    def derived(self, purpose: str) -> str:
        """A secret derived from the cloud's: converging again with the same credentials
        changes nothing."""
        return hmac.new(self.secret_key.encode(), f"nimbus {purpose}".encode(), hashlib.sha256).hexdigest()

    @property
    def chain_token(self) -> str:
        """What the VMMs' chain daemons ask of a stream."""
        return self.derived("chain")[:32]

    @property
    def redis_password(self) -> str:
        return self.derived("redis")

    @property
    def endpoint(self) -> str:
        return f"http://{self.service.address}:{API_PORT}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.service.address}:{CUMULUS_PORT}"

    def client_info(self, jobs: dict[str, int], kind: str = "grid5000") -> dict:
        return {"endpoint": self.endpoint, "s3_endpoint": self.s3_endpoint, "region": self.site,
                "access_key": self.access_key, "secret_key": self.secret_key, "service": self.service.hostname,
                "vmms": [v.hostname for v in self.vmms], "oar_job": jobs.get(self.site), "kind": kind}


def plan(nodes: NodeSet, description) -> list[CloudPlan]:
    """Per site: the first node runs the service, the others are VMMs; guests get the upper
    half of the site subnet (nodes hold the lower part, the gateway its last address)."""
    plans = []
    for site, (service, vmms) in heads(nodes).items():
        if not vmms:
            raise UserError(f"site {site} needs at least 2 nodes (a service node and a VMM)")
        subnet = description.site_subnet(site)
        hosts = list(subnet.hosts())
        taken = sum(1 for n in description.nodes() if n.site == site)
        pool = (str(hosts[max(taken + 1, len(hosts) // 2)]), str(hosts[-2]))
        plans.append(CloudPlan(site, service, vmms, pool, subnet.prefixlen, description.site_gateway(site)))
    return plans


def assignments(plans: list[CloudPlan], vmm_memory_mb: int, propagation: str, keys: dict[str, Path],
                shares: tuple[str, ...] = ()) -> dict[Node, tuple[str, dict]]:
    """Each node's role and attributes; `keys`: each cloud's ssh key (its VMMs authorize it);
    `shares`: the VMM directories its guests may mount (tag share)."""
    out: dict[Node, tuple[str, dict]] = {}
    regions = {p.site: p.endpoint for p in plans}
    for p in plans:
        authorized = keys[p.site].with_suffix(".pub").read_text().strip()
        out[p.service] = ("nimbus-service", {
            "g5kdeploy": {"address": p.service.address, "redis_password": p.redis_password},
            "nimbus": {"site": p.site, "credentials": {p.access_key: p.secret_key}, "pool": list(p.pool),
                       "api_port": API_PORT, "broker_port": BROKER_PORT, "chain_port": CHAIN_PORT,
                       "prefix": p.prefix, "gateway": p.gateway, "propagation": propagation,
                       "chain_token": p.chain_token, "authorized_key": authorized, "shares": list(shares),
                       "regions": regions, "cumulus_port": CUMULUS_PORT,
                       "cumulus_hash": p.derived("cumulus"),
                       "vmms": [{"host": v.hostname, "memory_mb": vmm_memory_mb, "cpus": 1} for v in p.vmms]}})
        for v in p.vmms:
            out[v] = ("nimbus-vmm", {"g5kdeploy": {"address": v.address},
                                     "nimbus": {"prefix": p.prefix, "chain_token": p.chain_token,
                                                "chain_port": CHAIN_PORT, "authorized_key": authorized}})
    return out


def cloud_key(home: Path, site: str) -> Path:
    """A cloud's own ssh key (its service node -> its VMMs), made once."""
    key = home / f"{site}_id"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nimbus", "-f", str(key)], check=True)
    return key


def configure(plans: list[CloudPlan], image: GuestImage, home: Path, vmm_memory_mb: int = 512,
              propagation: str = "qcow", runner: str = "itamae", logdir: Path | None = None,
              shares: tuple[str, ...] = ()) -> list[chef.Converge]:
    """Converge every cloud node in parallel with its role (a second run changes nothing).
    Each cloud has its own ssh key; only its service node receives the private part."""
    keys = {p.site: cloud_key(work_dir(home), p.site) for p in plans}
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-nimbus-") as tmp:
        return chef.apply(assignments(plans, vmm_memory_mb, propagation, keys, shares), vm_image.boot_files(image, tmp),
                          runner, logdir, secrets={p.service: {"nimbus_id": keys[p.site]} for p in plans})


def upload_images(plans: list[CloudPlan], disks: dict[str, Path]) -> remote.Results:
    """Register each guest disk (image id -> raw disk) in every cloud's repository."""
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-image-") as tmp:
        links = [Path(tmp) / f"{name}.img" for name in disks]
        for link, disk in zip(links, disks.values()):
            link.symlink_to(disk)
        return remote.put(links, [p.service for p in plans], REPOSITORY)


def client(cloud: dict):
    """A boto3 EC2 client for one entry of the clouds file."""
    import boto3
    return boto3.client("ec2", endpoint_url=cloud["endpoint"], region_name=cloud["region"],
                        aws_access_key_id=cloud["access_key"], aws_secret_access_key=cloud["secret_key"])


def s3_client(cloud: dict):
    """A boto3 S3 client for one cloud's Cumulus (path-style addressing)."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=cloud["s3_endpoint"], region_name=cloud["region"],
                        aws_access_key_id=cloud["access_key"], aws_secret_access_key=cloud["secret_key"],
                        config=Config(s3={"addressing_style": "path"}))


def verify(cloud: dict, timeout: float = 30) -> list[str]:
    """The cloud's image ids, once its API answers a signed DescribeImages and its Cumulus
    a signed ListBuckets (Swift answers 503 while its servers start)."""
    import botocore.exceptions
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3_client(cloud).list_buckets()
            return [i["ImageId"] for i in client(cloud).describe_images()["Images"]]
        except botocore.exceptions.ClientError as e:
            if e.response["ResponseMetadata"].get("HTTPStatusCode") != 503 or time.monotonic() > deadline:
                raise
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def aws_profile(site: str, cloud: dict, more: dict[str, str] | None = None) -> str:
    """An AWS CLI / SDK profile for one cloud: its EC2 API and its Cumulus (S3, path-style),
    and `more` endpoints by service (Resilin's `emr`)."""
    endpoints = {"ec2": cloud["endpoint"], **({"s3": cloud["s3_endpoint"]} if cloud.get("s3_endpoint") else {}),
                 **(more or {})}
    return (f"[profile {site}]\nregion = {cloud['region']}\naws_access_key_id = {cloud['access_key']}\n"
            f"aws_secret_access_key = {cloud['secret_key']}\nservices = {site}-endpoints\n"
            "s3 =\n    addressing_style = path\n"
            f"[services {site}-endpoints]\n" + "".join(f"{k} =\n    endpoint_url = {v}\n" for k, v in endpoints.items()))


def write_aws_config(path: Path, clouds: dict[str, dict], more: dict[str, str] | None = None) -> Path:
    """AWS_CONFIG: one profile per cloud (root's alone, replaced whole)."""
    write_atomic(path, "\n".join(aws_profile(s, c, more) for s, c in clouds.items()), 0o600)
    return path


def write_clouds(path: Path, clouds: dict[str, dict]) -> Path:
    """The clouds file (with their credentials), and AWS_CONFIG beside it: root's alone,
    each replaced whole."""
    work_dir(path.parent)
    write_atomic(path, json.dumps(clouds, indent=2), 0o600)
    write_aws_config(path.with_name(AWS_CONFIG.name), clouds)
    return path


def terminate_all(cloud: dict) -> str:
    """Terminate every guest of a cloud; what went wrong, or ''."""
    import botocore.exceptions
    try:
        ec2 = client(cloud)
        alive = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
        if alive:
            ec2.terminate_instances(InstanceIds=alive)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        return str(e)
    return ""


def kept(path: Path) -> dict[str, dict]:
    """The clouds of the clouds file that outlive the user's deployments (KEPT)."""
    return {s: c for s, c in json.loads(path.read_text()).items() if c.get("kind") in KEPT} if path.exists() else {}


def add_external(path: Path, name: str, endpoint: str, access_key: str, secret_key: str, region: str,
                 s3_endpoint: str | None = None) -> dict:
    """A cloud we did not deploy into the clouds file, once it answers a DescribeImages
    signed with these credentials (and its S3 a ListBuckets); its entry."""
    import re
    from urllib.parse import urlsplit

    import botocore.exceptions
    clouds = json.loads(path.read_text()) if path.exists() else {}
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
        raise UserError(f"cloud name {name[:40]!r}: lowercase letters, digits and '-' (it names an AWS CLI profile)")
    if name in clouds:
        raise UserError(f"a cloud named {name} is in the clouds file already: remove it first "
                        f"(invoke cloud-remove {name}) or choose another name")
    for url in filter(None, (endpoint, s3_endpoint)):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise UserError(f"endpoint {url[:80]!r}: give a URL, like http://198.19.1.1:8773")
    cloud = {"endpoint": endpoint, "s3_endpoint": s3_endpoint, "region": region, "access_key": access_key,
             "secret_key": secret_key, "kind": "external"}
    try:
        client(cloud).describe_images()
        if s3_endpoint:
            s3_client(cloud).list_buckets()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        raise UserError(f"cloud {name} does not answer with these credentials: {str(e)[:200]}") from None
    write_clouds(path, {**clouds, name: cloud})
    return cloud


def remove_external(path: Path, name: str) -> None:
    """Forget a cloud cloud-add added (nothing in the cloud changes)."""
    clouds = json.loads(path.read_text()) if path.exists() else {}
    if clouds.get(name, {}).get("kind") != "external":
        have = ", ".join(f"{s} ({c.get('kind', 'grid5000')})" for s, c in clouds.items()) or "none"
        raise UserError(f"no cloud {name} added with cloud-add: the clouds file has {have}")
    clouds.pop(name)
    write_clouds(path, clouds)


def teardown(path: Path, testbed) -> list[str]:
    """Terminate every guest of the user's clouds in the clouds file and end their OAR
    jobs; the KEPT clouds (not the user's) stay in it as they are. Returns what could not be
    done (a cloud already gone is not a problem)."""
    from datetime import datetime

    from g5kdeploy.testbed.model import Reservation
    if not path.exists():
        return []
    clouds = {s: c for s, c in json.loads(path.read_text()).items() if c.get("kind") not in KEPT}
    path.with_name(AWS_CONFIG.name).unlink(missing_ok=True)
    problems = [f"{site}: {e}" for site, cloud in clouds.items() if (e := terminate_all(cloud))]
    jobs = {s: c["oar_job"] for s, c in clouds.items() if c.get("oar_job")}
    if jobs:
        try:
            testbed.release(Reservation(jobs, NodeSet(), datetime.now(), "nimbus"))
        except Exception as e:      # jobs of a testbed that was rebuilt are gone already
            problems.append(f"OAR jobs {sorted(jobs.values())}: {e}")
    if left := kept(path):
        write_clouds(path, left)
    else:
        path.unlink()
    return problems


def build(run, testbed, res, reserved_at: float, stage, vmm_memory_mb: int = 512, propagation: str = "qcow",
          image: str = vm_image.NAME, image_size_mb: int = 32, payload: Path | None = None, runner: str = "itamae",
          shares: tuple[str, ...] = (), guests: tuple[str, ...] = (), **columns) -> dict:
    """Deploy, converge and check one cloud per site of the reservation, into the run's rows
    (with `columns` added), each step in `stage` (the engine's: this layer is below it);
    the clouds' client information. Every cloud gets the busybox guest as `image` and the
    Debian `guests` (vm.debian roles) under their own names. Also writes the run's
    clouds.json (without secrets)."""
    plans = plan(res.nodes, testbed.description)
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
        disks = {image: guest.disk, **{g: debian.build(g) for g in guests}}
        rows.add("frontend", "image", t, time.time(), True)
        converged = configure(plans, guest, CLOUDS.parent, int(vmm_memory_mb), propagation, runner, run.dir / "logs",
                              shares)
        for c in converged:
            rows.add(c.host, "ship", c.ship_start, c.ship_end, c.shipped, "" if c.shipped else c.error)
            if c.shipped:
                rows.add(c.host, "configure", c.start, c.end, c.ok, c.error, changed=c.changed)
        t = time.time()
        for r in upload_images(plans, disks):
            rows.add(r.host, "upload", t, t + r.duration_s, r.ok, r.error)
    rows.fail_if("configuration")
    clouds = {p.site: p.client_info(res.jobs, testbed.description.sites[p.site].kind) for p in plans}
    with stage(run, "verify"):
        for p in plans:
            t = time.time()
            images = verify(clouds[p.site])
            rows.add(p.service.hostname, "verify", t, time.time(), set(disks) <= set(images), images=",".join(images))
    rows.fail_if("verification")
    write_atomic(run.dir / "clouds.json", json.dumps(
        {s: {k: v for k, v in c.items() if k != "secret_key"} for s, c in clouds.items()}, indent=2))
    return clouds


class Rows:
    """The run's rows, one per node and stage, with each node's site and role."""

    def __init__(self, run, plans: list[CloudPlan], columns: dict | None = None):
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
        self.run.event(stage_name, "end", host, t=end, duration_s=round(end - start, 3), outcome=outcome)
        if not ok:
            self.failed.append(f"{host} ({stage_name}): {error}")

    def add_all(self, nodes, stage_name: str, start: float, end: float) -> None:
        for n in nodes:
            self.add(n.hostname, stage_name, start, end, True)

    def fail_if(self, what: str) -> None:
        if self.failed:
            raise RuntimeError(f"{what} failed on " + "; ".join(self.failed))
