"""Grid'5000: OAR jobs and Kadeploy deployments through the REST API (python-grid5000),
nodes from the Reference API. Reserving, reusing, walltime and thresholds are shared with
the local backend (testbed/__init__.py); only HTTP is here.

Configuration is python-grid5000's `~/.python-grid5000.yaml` (username, password, uri,
verify_ssl), plus our keys in the same file: `environment` (what `debian12-g5kdeploy`
means here, default debian12-min), `ssh_key` (public key given to Kadeploy), `sites`
(the sites to describe, default all), `excluded_sites` (left out of them), `gateway` (how
to reach nodes: default access.grid5000.fr from outside Grid'5000, null for directly), and
`arch`, `version`, `deploy_timeout_s`, `reference_max_age_s` (see G5kTestbed)."""
from __future__ import annotations

import dataclasses
import getpass
import hashlib
import ipaddress
import json
import shlex
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from g5kdeploy.errors import UserError
from g5kdeploy.files import write_atomic
from g5kdeploy.progress import Outcome, console
from g5kdeploy.testbed import Testbed
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.model import DOMAIN, Cluster, Node, NodeSet, Site, expand_hostlist, format_walltime
from g5kdeploy.testbed.oar import Job, Scheduler

CONFIG = Path.home() / ".python-grid5000.yaml"
CACHE = Path.home() / ".cache" / "g5kdeploy"        # the Reference API's nodes, per API and sites
ACCESS = "access.grid5000.fr"
OURS = ("environment", "ssh_key", "sites", "excluded_sites", "gateway", "arch", "version", "deploy_timeout_s",
        "reference_max_age_s")                  # keys of the config file that are not python-grid5000's
TIMEOUT_S = 30          # per HTTP request (python-grid5000 retries 5 times on 500/502/504 and connection errors)
# the states a live job can be listed by: the API capitalizes each asked state (g5k-api
# lib/oar/job.rb, Job.list), so OAR's toLaunch and toAckReservation cannot be asked for
# (they last a moment; `job()` reports them, and Job.live counts them live)
LIVE = "waiting,hold,launching,running,suspended,resuming"
LIST_LIMIT = 500        # the API's largest page (jobs_controller.rb LIMIT_MAX; 50 by default)
PARIS = ZoneInfo("Europe/Paris")   # Grid'5000's OAR time zone


def _errors(what: str):
    """python-grid5000's HTTP errors as one line that says what to do."""
    from grid5000.exceptions import Grid5000Error
    from requests.exceptions import ConnectionError as Unreachable
    from requests.exceptions import RetryError, Timeout

    def wrap(fn):
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (RetryError, Timeout) as e:
                raise UserError(f"Grid'5000 API: {what} got no answer ({e.__class__.__name__} after "
                                f"{TIMEOUT_S} s and retries): try again later, or see https://www.grid5000.fr/status")\
                    from None
            except Grid5000Error as e:
                code = getattr(e, "response_code", None)
                hint = "check username/password in ~/.python-grid5000.yaml" if code == 401 else "see the API's answer"
                raise UserError(f"Grid'5000 API: {what} failed ({code}: {str(e).strip()[:200]}): {hint}") from None
            except Unreachable as e:
                raise UserError(f"Grid'5000 API unreachable ({e.__class__.__name__}): check `uri` in "
                                "~/.python-grid5000.yaml and your network (VPN, or run from a frontend)") from None
        return call
    return wrap


class G5kApi(Scheduler):
    """OAR of every site through /sites/<site>/jobs."""
    poll_s = (5.0, 45.0)         # as EnOSlib polls the live service

    def __init__(self, client, user: str | None):
        self.client, self.user = client, user

    def _jobs(self, site: str):
        return self.client.sites[site].jobs

    @_errors("job submission")
    def submit(self, site, resources, walltime_s, name, command, properties=None, types=(), queue=None, project=None,
               reservation=None) -> int:
        spec = {"name": name, "resources": f"{resources},walltime={format_walltime(walltime_s)}",
                "command": command, "types": list(types)}
        if properties:
            spec["properties"] = properties
        spec |= {k: v for k, v in (("queue", queue), ("project", project)) if v}
        if reservation:              # Grid'5000's OAR reads it in its own time zone (app/models/grid5000/job.rb)
            spec["reservation"] = datetime.fromtimestamp(reservation, PARIS).strftime("%Y-%m-%d %H:%M:%S")
        return int(self._jobs(site).create(spec).uid)

    @_errors("job status")
    def job(self, site: str, job: int) -> Job:
        return _job(site, self._jobs(site)[job])

    @_errors("job listing")
    def live(self, site: str, name: str) -> list[Job]:
        """This user's live jobs of that name (the API filters by user only when asked to)."""
        found = self._jobs(site).list(state=LIVE, user=self.user, name=name, limit=LIST_LIMIT)
        return sorted((_job(site, j) for j in found if getattr(j, "name", None) == name
                       and getattr(j, "user", self.user) == self.user), key=lambda j: j.id)

    @_errors("job listing")
    def on_site(self, site: str) -> list[Job]:
        """Every live job of the site, with its nodes (listed only with `resources=yes`)."""
        return [_job(site, j) for j in self._jobs(site).list(state=LIVE, resources="yes", limit=LIST_LIMIT)]

    @_errors("job deletion")
    def delete(self, site: str, *jobs: int) -> None:
        """End jobs; one that has ended already is not an error (its end is what was asked)."""
        from grid5000.exceptions import Grid5000Error
        for job in jobs:
            if not self.job(site, job).live:
                continue
            try:
                self._jobs(site)[job].delete()
            except Grid5000Error:
                if self.job(site, job).live:        # it did not end meanwhile: a real refusal
                    raise

    @_errors("walltime change")
    def extend(self, site: str, job: int, seconds: int) -> None:
        self._jobs(site)[job].walltime_change.create({"walltime": "+" + format_walltime(seconds)})

    @_errors("node status")
    def down(self, site: str) -> dict[str, str]:
        """From the site's status (sites_controller.rb status, lib/oar/resource.rb: `hard` is
        OAR's resource state, lower-cased; standby nodes are absent ones OAR wakes on demand)."""
        status = self.client.sites[site].status.list(disks="no", waiting="no", job_details="no")
        return {host: st["hard"] for host, st in (getattr(status, "nodes", None) or {}).items()
                if st.get("hard") in ("dead", "absent", "suspected")}


def _job(site: str, j) -> Job:
    return Job(site, int(j.uid), j.state.lower(), getattr(j, "name", "") or "",
               sorted(getattr(j, "assigned_nodes", []) or []),
               float(j.started_at) if getattr(j, "started_at", None) else None, int(getattr(j, "walltime", 0) or 0),
               tuple(getattr(j, "types", ()) or ()))


class G5kTestbed(Testbed):
    """The real Grid'5000 (or any server that speaks its API, see testbed/local/g5k_api.py)."""
    kind = "g5k"
    environments = ()       # any environment Kadeploy knows

    def __init__(self, client, config: dict):
        super().__init__()
        self.client, self.config = client, config
        self.user = config.get("username") or getpass.getuser()     # on a frontend: the login user
        self.scheduler = G5kApi(client, self.user)
        self.excluded = frozenset(config.get("excluded_sites") or ())
        self._nodes, clusters = self._reference(config.get("sites"))
        self.description = _describe(self._nodes, clusters, config.get("uri", "https://api.grid5000.fr/stable"))

    @classmethod
    def connect(cls, config: Path | str = CONFIG) -> "G5kTestbed":
        from grid5000 import Grid5000
        conf = read_config(Path(config))
        client = Grid5000(**{"timeout": TIMEOUT_S, **{k: v for k, v in conf.items() if k not in OURS}})
        return cls(client, conf)

    def _reference(self, sites: list[str] | None) -> tuple[NodeSet, dict[str, dict]]:
        """The nodes of the Reference API and what jobs each cluster takes (`_site_nodes`),
        from a cache on disk younger than `reference_max_age_s` (config, default a day) or
        asked again; clusters of every queue (`queues=all`: production ones too). A site that
        does not answer is left out with a warning, unless no site answers."""
        uri = self.config.get("uri", "https://api.grid5000.fr/stable")
        key = f"{uri} {sites} {sorted(self.excluded)}"
        path = CACHE / f"reference-2-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        if path.is_file() and time.time() - path.stat().st_mtime < float(self.config.get("reference_max_age_s", 86400)):
            cached = json.loads(path.read_text())
            return NodeSet(Node(**n) for n in cached["nodes"]), cached["clusters"]
        nodes, clusters, lost = NodeSet(), {}, []
        for site in (s for s in sites or self._site_names() if s not in self.excluded):
            try:
                site_nodes, site_clusters = self._site_nodes(site)
            except UserError as e:
                lost.append(f"{site} ({e})")
                continue
            nodes += site_nodes
            clusters |= site_clusters
        if lost and not nodes:
            raise UserError("Grid'5000 Reference API: no site answered: " + "; ".join(lost))
        if lost:
            console.print(f"[yellow]left out of the description: {'; '.join(lost)}[/yellow]")
        else:
            CACHE.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"nodes": [dataclasses.asdict(n) for n in nodes], "clusters": clusters}))
        return nodes, clusters

    @_errors("reading the Reference API")
    def _site_names(self) -> list[str]:
        return [s.uid for s in self.client.sites.list()]

    @_errors("reading the Reference API")
    def _site_nodes(self, site: str) -> tuple[list[Node], dict[str, dict]]:
        """The site's nodes, and per cluster the jobs it takes: its `exotic` flag, its `queues`
        and its nodes' `supported_job_types` (deploy)."""
        nodes, clusters = [], {}
        for cluster in self.client.sites[site].clusters.list(queues="all"):
            for n in cluster.nodes.list():
                ip = next((a["ip"] for a in n.network_adapters if a.get("mounted") and a.get("ip")), "")
                nodes.append(Node(f"{n.uid}.{site}.{DOMAIN}", ip, site, cluster.uid,
                                  int(n.architecture["nb_cores"]), int(n.main_memory["ram_size"]) // 2**30))
                jobs = getattr(n, "supported_job_types", None) or {}
                clusters.setdefault(cluster.uid, {
                    "exotic": bool(getattr(cluster, "exotic", False)),
                    "queues": [q for q in getattr(cluster, "queues", None) or jobs.get("queues") or ["default"]
                               if q != "admin"],      # resources_controller.rb: ["admin", "default"] if none
                    "deploy": bool(jobs.get("deploy", True))})
        return nodes, clusters

    def nodes(self, hosts: str | None = None) -> NodeSet:
        if hosts is None:
            return NodeSet(self._nodes)
        by_name = {a: n for n in self._nodes for a in (n.hostname, f"{n.short}.{n.site}")}
        unknown = [h for h in expand_hostlist(hosts) if h not in by_name]
        if unknown:
            raise UserError(f"unknown node(s) {', '.join(unknown)}: name them like paradent-3.rennes")
        return NodeSet(by_name[h] for h in expand_hostlist(hosts))

    # -- Kadeploy --------------------------------------------------------------------------
    @_errors("deployment")
    def reimage(self, nodes: NodeSet, environment: str) -> dict[str, Outcome]:
        """One Kadeploy deployment per site, all polled together; KO nodes are failed outcomes.
        A deployment still waiting or processing after `deploy_timeout_s` (config, default
        1800) is cancelled (DELETE, as deployments_controller.rb destroy) and its nodes fail.
        `arch` and `version` (config) are passed to Kadeploy when given."""
        env = self.kadeploy_name(environment)
        spec = {"environment": env, "key": self._public_key(),
                **{k: self.config[k] for k in ("arch", "version") if k in self.config}}
        t0, limit = time.monotonic(), float(self.config.get("deploy_timeout_s", 1800))
        running = {site: self.client.sites[site].deployments.create({**spec, "nodes": group.hostnames()})
                   for site, group in nodes.by_site().items()}
        done, delay = {}, 2.0
        with console.status(f"Kadeploy {env} on {nodes}"):
            while running:
                for site, d in list(running.items()):
                    if d.status not in ("waiting", "processing"):
                        done[site] = (d, time.monotonic() - t0)
                        del running[site]
                    elif time.monotonic() - t0 > limit:
                        self.client.sites[site].deployments.delete(d.uid)
                        done[site] = (d, limit)
                        del running[site]
                if running:
                    time.sleep(delay)
                    delay = min(30.0, delay * 1.5)
                    for d in running.values():
                        d.refresh()
        out: dict[str, Outcome] = {}
        for site, (d, took) in done.items():
            result = getattr(d, "result", None) or {}
            for n in nodes.by_site()[site]:
                state = result.get(n.hostname, {}).get("state", "KO")
                why = f"timed out after {limit:.0f} s, cancelled" if took >= limit else f"deployment {d.status}"
                out[n.hostname] = Outcome(n, state == "OK", error="" if state == "OK" else
                                          f"Kadeploy {d.uid}: {state} ({why})", duration_s=took)
        return out

    def kadeploy_name(self, environment: str) -> str:
        """debian12-g5kdeploy is `environment` of the config here (default debian12-min)."""
        return self.config.get("environment", "debian12-min") if environment == "debian12-g5kdeploy" else environment

    @_errors("deployment listing")
    def deployments(self, nodes: NodeSet) -> dict[str, tuple[str, float]]:
        """From this user's latest deployments per site, newest first (deployments_controller.rb
        index: `user`, ordered by created_at DESC, 50 by default)."""
        out: dict[str, tuple[str, float]] = {}
        for site, group in nodes.by_site().items():
            todo = set(group.hostnames())
            for d in self.client.sites[site].deployments.list(user=self.user):
                for host in todo & set(getattr(d, "nodes", [])):
                    todo.discard(host)
                    if d.status == "terminated" and (getattr(d, "result", None) or {}).get(host, {}).get("state") == "OK":
                        out[host] = (d.environment, float(d.created_at))
                if not todo:
                    break
        return out

    def _key(self) -> Path:
        """The public key given to Kadeploy (`ssh_key`, `~` expanded; default the first of
        ~/.ssh/id_ed25519.pub, id_rsa.pub that exists)."""
        if "ssh_key" in self.config:
            return Path(self.config["ssh_key"]).expanduser()
        found = [p for p in (Path.home() / ".ssh" / f"{k}.pub" for k in ("id_ed25519", "id_rsa")) if p.is_file()]
        return found[0] if found else Path.home() / ".ssh" / "id_ed25519.pub"

    def _public_key(self) -> str:
        if (path := self._key()).is_file():
            return path.read_text().strip()
        raise UserError("no ssh public key for Kadeploy: create ~/.ssh/id_ed25519 (ssh-keygen) "
                        "or set ssh_key in ~/.python-grid5000.yaml")

    # -- access ---------------------------------------------------------------------------------
    def ssh_settings(self, deploy: bool = True) -> dict:
        """root on deployed nodes with your key, yourself with sudo-g5k on the nodes of other
        jobs (their standard system); through `gateway` (default: access.grid5000.fr from
        outside Grid'5000, none from inside; null: none)."""
        out = {"user": "root" if deploy else self.user, "port": 22, "keyfile": str(self._key().with_suffix(""))} | \
            ({} if deploy else {"sudo": "sudo-g5k"})
        gateway = self.config.get("gateway", "auto")
        if gateway == "auto":
            gateway = None if _inside() else ACCESS
        return out | ({"gateway": gateway, "gateway_user": self.user} if gateway else {})

    def output_dir(self) -> Path:
        return Path.home()

    @property
    def batch_invoke(self) -> str:
        """The checkout's virtualenv when this runs from one (a path relative to the checkout,
        where the job starts), else the frontend's python3."""
        python = Path(sys.executable)
        return f"{shlex.quote(str(python.relative_to(Path.cwd())))} -m invoke" if python.is_relative_to(Path.cwd()) \
            else "python3 -m invoke"

    def batch_path(self, path: Path) -> str:
        """Relative to the home directory when it is in it: the job runs on the first site's
        frontend, whose home holds the same checkout at the same place, not this machine's
        absolute path (a laptop's, another site's)."""
        if path.is_relative_to(Path.home()):
            return f'"$HOME"/{shlex.quote(str(path.relative_to(Path.home())))}'
        return shlex.quote(str(path))

    def destroy(self) -> None:
        """Nothing of Grid'5000 is ours to remove but jobs: end the live ones reserved here."""
        for r in list(self.reservations):
            self.release(r)


def read_config(path: Path) -> dict:
    """The configuration file's keys; inside Grid'5000 none is needed (the API knows the
    user there, as EnOSlib assumes)."""
    if path.is_file():
        return yaml.safe_load(path.read_text()) or {}
    if _inside():
        return {}
    raise UserError(f"no {path}: write your Grid'5000 login there (username: ..., password: ...), "
                    "see README 'Running on Grid'5000'")


def _inside() -> bool:
    """On a Grid'5000 machine (a frontend, a node)."""
    return socket.getfqdn().endswith("." + DOMAIN)


def _describe(nodes: NodeSet, takes: dict[str, dict], uri: str) -> Description:
    """Sites and clusters as the Reference API gives them (no address plan: the network is real)."""
    sites: dict[str, Site] = {}
    for site, group in nodes.by_site().items():
        clusters = {}
        for n in group:
            c, t = clusters.get(n.cluster), takes.get(n.cluster, {})
            clusters[n.cluster] = Cluster(n.cluster, site, (c.nodes if c else 0) + 1, n.cores, n.memory_gib,
                                          tuple(t.get("queues", ["default"])), t.get("exotic", False),
                                          t.get("deploy", True))
        sites[site] = Site(site, tuple(clusters.values()))
    return Description("grid5000", ipaddress.ip_network("0.0.0.0/32"), 0, 0, sites,
                       source={"name": "grid5000", "api": uri, "nodes": str(nodes)})
