"""Grid'5000: OAR jobs and Kadeploy deployments through the REST API (python-grid5000),
nodes from the Reference API. Reserving, reusing, walltime and thresholds are shared with
the local backend (testbed/__init__.py); only HTTP is here.

Configuration is python-grid5000's `~/.python-grid5000.yaml` (username, password, uri,
verify_ssl), plus our keys in the same file: `environment` (what `debian12-g5kdeploy`
means here, default debian12-min), `ssh_key` (public key given to Kadeploy), `sites`
(the sites to describe, default all) and `gateway` (how to reach nodes: default
access.grid5000.fr from outside Grid'5000, null for directly)."""
from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

import yaml

from g5kdeploy.errors import UserError
from g5kdeploy.progress import Outcome, console
from g5kdeploy.testbed import Testbed
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.model import DOMAIN, Cluster, Node, NodeSet, Site, expand_hostlist, format_walltime
from g5kdeploy.testbed.oar import Job, Scheduler

CONFIG = Path.home() / ".python-grid5000.yaml"
ACCESS = "access.grid5000.fr"
OURS = ("environment", "ssh_key", "sites", "gateway")     # keys of the config file that are not python-grid5000's


def _errors(what: str):
    """python-grid5000's HTTP errors as one line that says what to do."""
    from grid5000.exceptions import Grid5000Error
    from requests.exceptions import ConnectionError as Unreachable

    def wrap(fn):
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
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

    def __init__(self, client, user: str | None):
        self.client, self.user = client, user

    def _jobs(self, site: str):
        return self.client.sites[site].jobs

    @_errors("job submission")
    def submit(self, site, nodes, walltime_s, name, command, properties=None, types=()) -> int:
        spec = {"name": name, "resources": f"nodes={nodes},walltime={format_walltime(walltime_s)}",
                "command": command, "types": list(types)}
        if properties:
            spec["properties"] = properties
        return int(self._jobs(site).create(spec).uid)

    @_errors("job status")
    def job(self, site: str, job: int) -> Job:
        return _job(site, self._jobs(site)[job])

    @_errors("job listing")
    def live(self, site: str, name: str) -> list[Job]:
        found = self._jobs(site).list(state="waiting,launching,running", user=self.user, name=name)
        return sorted((_job(site, j) for j in found if getattr(j, "name", name) == name), key=lambda j: j.id)

    @_errors("job listing")
    def on_site(self, site: str) -> list[Job]:
        return [_job(site, j) for j in self._jobs(site).list(state="waiting,launching,running")]

    @_errors("job deletion")
    def delete(self, site: str, *jobs: int) -> None:
        for job in jobs:
            self._jobs(site)[job].delete()

    @_errors("walltime change")
    def extend(self, site: str, job: int, seconds: int) -> None:
        self._jobs(site)[job].walltime_change.create({"walltime": "+" + format_walltime(seconds)})


def _job(site: str, j) -> Job:
    return Job(site, int(j.uid), j.state, getattr(j, "name", "") or "", sorted(getattr(j, "assigned_nodes", []) or []),
               float(j.started_at) if getattr(j, "started_at", None) else None, int(getattr(j, "walltime", 0) or 0))


class G5kTestbed(Testbed):
    """The real Grid'5000 (or any server that speaks its API, see testbed/local/g5k_api.py)."""
    kind = "g5k"
    environments = ()       # any environment Kadeploy knows

    def __init__(self, client, config: dict):
        super().__init__()
        self.client, self.config = client, config
        self.user = config.get("username")
        self.scheduler = G5kApi(client, self.user)
        self._nodes = self._reference(config.get("sites"))
        self.description = _describe(self._nodes, config.get("uri", "https://api.grid5000.fr/stable"))

    @classmethod
    def connect(cls, config: Path | str = CONFIG) -> "G5kTestbed":
        from grid5000 import Grid5000
        path = Path(config)
        if not path.is_file():
            raise UserError(f"no {path}: write your Grid'5000 login there (username: ..., password: ...), "
                            "see README 'Running on Grid'5000'")
        conf = yaml.safe_load(path.read_text()) or {}
        client = Grid5000(**{k: v for k, v in conf.items() if k not in OURS})
        return cls(client, conf)

    @_errors("reading the Reference API")
    def _reference(self, sites: list[str] | None) -> NodeSet:
        out = NodeSet()
        for site in sites or [s.uid for s in self.client.sites.list()]:
            for cluster in self.client.sites[site].clusters.list():
                for n in cluster.nodes.list():
                    ip = next((a["ip"] for a in n.network_adapters if a.get("mounted") and a.get("ip")), "")
                    out.append(Node(f"{n.uid}.{site}.{DOMAIN}", ip, site, cluster.uid,
                                    int(n.architecture["nb_cores"]), int(n.main_memory["ram_size"]) // 2**30))
        return out

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
        """One Kadeploy deployment per site, in parallel; KO nodes are failed outcomes."""
        env = self.config.get("environment", "debian12-min") if environment == "debian12-g5kdeploy" else environment
        key = self._public_key()
        started = {site: (self.client.sites[site].deployments.create(
            {"nodes": group.hostnames(), "environment": env, "key": key}), time.monotonic())
            for site, group in nodes.by_site().items()}
        out: dict[str, Outcome] = {}
        with console.status(f"Kadeploy {env} on {nodes}"):
            for site, (d, t0) in started.items():
                while d.status == "processing":
                    time.sleep(2)
                    d.refresh()
                result = getattr(d, "result", None) or {}
                for n in nodes.by_site()[site]:
                    state = result.get(n.hostname, {}).get("state", "KO" if d.status != "terminated" else "?")
                    out[n.hostname] = Outcome(n, state == "OK", error="" if state == "OK" else
                                              f"Kadeploy {d.uid}: {state} (deployment {d.status})",
                                              duration_s=time.monotonic() - t0)
        return out

    def _public_key(self) -> str:
        candidates = [self.config["ssh_key"]] if "ssh_key" in self.config else \
            [Path.home() / ".ssh" / f"{k}.pub" for k in ("id_ed25519", "id_rsa")]
        for path in map(Path, candidates):
            if path.is_file():
                return path.read_text().strip()
        raise UserError("no ssh public key for Kadeploy: create ~/.ssh/id_ed25519 (ssh-keygen) "
                        "or set ssh_key in ~/.python-grid5000.yaml")

    # -- access ---------------------------------------------------------------------------------
    def ssh_settings(self) -> dict:
        """root on deployed nodes with your key; through `gateway` (default: access.grid5000.fr
        from outside Grid'5000, none from inside; null: none)."""
        key = Path(self.config.get("ssh_key", Path.home() / ".ssh/id_ed25519.pub")).with_suffix("")
        out = {"user": "root", "port": 22, "keyfile": str(key)}
        gateway = self.config.get("gateway", "auto")
        if gateway == "auto":
            gateway = None if socket.getfqdn().endswith("." + DOMAIN) else ACCESS
        return out | ({"gateway": gateway, "gateway_user": self.user} if gateway else {})

    def output_dir(self) -> Path:
        return Path.home()

    def destroy(self) -> None:
        """Nothing of Grid'5000 is ours to remove but jobs: end the live ones reserved here."""
        for r in list(self.reservations):
            self.release(r)


def _describe(nodes: NodeSet, uri: str) -> Description:
    """Sites and clusters as the Reference API gives them (no address plan: the network is real)."""
    sites: dict[str, Site] = {}
    for site, group in nodes.by_site().items():
        clusters = {}
        for n in group:
            c = clusters.get(n.cluster)
            clusters[n.cluster] = Cluster(n.cluster, site, (c.nodes if c else 0) + 1, n.cores, n.memory_gib)
        sites[site] = Site(site, tuple(clusters.values()))
    return Description("grid5000", ipaddress.ip_network("0.0.0.0/32"), 0, 0, sites,
                       source={"name": "grid5000", "api": uri, "nodes": str(nodes)})
