"""The Grid'5000 REST API, served over the local testbed: the one part of Grid'5000 that
cannot be reached from here, as its documented schemas describe it, backed by real parts.

    GET    /sites, /sites/<s>, /sites/<s>/clusters, /sites/<s>/clusters/<c>/nodes     Reference API
    GET    /sites/<s>/status          nodes[host].hard alive|dead|absent|suspected, .soft free|busy
    POST   /sites/<s>/jobs            {resources, command, name, types, properties}            201
    GET    /sites/<s>/jobs?state=&user=&name=&resources=&limit=,  /sites/<s>/jobs/<id>
    DELETE /sites/<s>/jobs/<id>                                                           202
    POST   /sites/<s>/jobs/<id>/walltime  {walltime: "+H:MM:SS" or "H:MM:SS"}             202
    POST   /sites/<s>/deployments     {nodes, environment, key, arch, version}   only nodes of running deploy jobs
    GET    /sites/<s>/deployments?user=&status=&limit=     newest first
    GET    /sites/<s>/deployments/<uid>   status processing|terminated|canceled, result[node].state OK|KO
    DELETE /sites/<s>/deployments/<uid>   cancel                                                   202

Jobs are jobs of the local OAR (they end when their command exits), deployments reimage the
local nodes, node states are OAR's; HTTP Basic authentication with one user. What the
Reference API says of a cluster that the local testbed has no notion of (exotic, its queues,
not deployable) can be given (`clusters`); jobs are then kept off such clusters unless they
may have them, as Grid'5000's OAR admission rules do (exotic ones need `-t exotic`).
Where the real server's behaviour is known from its source (grid5000/g5k-api), this follows it: job states are OAR's, lower-cased
(tolaunch, toackreservation, hold, ...: lib/oar/job.rb `state`); `state=` filters capitalize
each asked state, so camel-case ones match nothing (Job.list); listings hold `assigned_nodes`
only with `resources=yes` and 50 jobs unless `limit` (jobs_controller.rb index, LIMIT); DELETE
and walltime changes answer 202 (jobs_controller.rb destroy, jobs_walltime_controller.rb
update). Used by the g5k backend's tests; run it to try the backend:
`python -m g5kdeploy.testbed.local.g5k_api 8080`."""
from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from g5kdeploy.errors import UserError
from g5kdeploy.testbed.g5k import PARIS
from g5kdeploy.testbed.local import LocalTestbed
from g5kdeploy.testbed.model import parse_walltime
from g5kdeploy.testbed.oar import Job

PREFIX = "/stable"


class Api:
    """What the handler serves: the testbed, its deployments, the one account."""

    def __init__(self, testbed: LocalTestbed, user: str, password: str, clusters: dict | None = None):
        self.tb, self.user, self.password = testbed, user, password
        facts = {name: {k: tuple(v) if k == "queues" else v for k, v in given.items()}
                 for name, given in (clusters or {}).items()}
        self.takes = {c.name: replace(c, **facts.get(c.name, {}))       # what jobs each cluster takes
                      for site in testbed.description.sites.values() for c in site.clusters}
        self.deployments: dict[str, dict] = {}
        self.lock = threading.Lock()

    # -- Reference API -----------------------------------------------------------------------
    def sites(self):
        return _items([{"uid": k, "type": "site"} for k, s in self.tb.description.sites.items() if s.kind == "grid5000"])

    def site(self, site):
        self._site(site)
        return {"uid": site, "type": "site"}

    def clusters(self, site, query):
        """Those sharing a queue with the asked ones, as resources_controller.rb (enrich_params,
        lookup_path) filters them: admin and default when none asked, `all` adds production."""
        asked = query.get("queues", [""])[0]
        asked = {"": ["admin", "default"], "all": ["admin", "default", "production"]}.get(asked, asked.split(","))
        return _items([{"uid": c.name, "type": "cluster", "exotic": c.exotic, "queues": ["admin", *c.queues]}
                       for c in (self.takes[k.name] for k in self._site(site).clusters)
                       if set(asked) & {"admin", *c.queues}])

    def cluster_nodes(self, site, cluster):
        self._site(site)
        nodes = [n for n in self.tb.nodes() if n.site == site and n.cluster == cluster]
        if not nodes:
            raise KeyError(cluster)
        c = self.takes[cluster]
        return _items([{"uid": n.short, "type": "node", "architecture": {"nb_cores": n.cores},
                        "main_memory": {"ram_size": n.memory_gib * 2**30},
                        "network_adapters": [{"device": "eth0", "ip": n.address, "mounted": True}],
                        "supported_job_types": {"deploy": c.deploy, "besteffort": True, "queues": ["admin", *c.queues]}}
                       for n in nodes])

    def status(self, site) -> dict:
        """Per node, OAR's state of it (`hard`) and whether a job holds it (`soft`)."""
        self._site(site)
        down = self.tb.scheduler.down(site)
        busy = self.tb.scheduler.holders(site)
        return {"uid": int(time.time()), "nodes": {
            n.hostname: {"hard": down.get(n.hostname, "alive"), "soft": "busy" if n.hostname in busy else "free",
                         "reservations": []} for n in self.tb.nodes() if n.site == site}}

    def _site(self, site):
        """A site of Grid'5000's (a FutureGrid site is not in its API: KeyError, a 404)."""
        s = self.tb.description.sites[site]
        if s.kind != "grid5000":
            raise KeyError(site)
        return s

    # -- jobs ---------------------------------------------------------------------------------
    def job(self, site, job) -> dict:
        self._site(site)
        return _job_json(self.tb.scheduler.job(site, int(job)), self.user)

    def jobs(self, site, query) -> dict:
        self._site(site)
        first = {k: v[0] for k, v in query.items()}
        # OAR's own spelling of the asked states, as Job.list capitalizes them
        asked = {s.strip().capitalize() for s in first["state"].split(",")} if "state" in first else None
        if first.get("user") not in (None, "", self.user):
            return _items([])                                   # one account: its jobs only
        found = [self.tb.scheduler.job(site, int(j)) for j, st in self.tb.scheduler.jobs().items()
                 if first.get("name") in (None, "", st.get("name"))]
        found = [j for j in found if j.site == site and (asked is None or OAR_STATES.get(j.state) in asked)]
        listed = [_job_json(j, self.user, nodes=first.get("resources", "no") != "no")
                  for j in sorted(found, key=lambda j: -j.id)[:int(first.get("limit", LIMIT))]]
        return _items(listed)

    def submit(self, site, spec) -> dict:
        self._site(site)
        m = re.fullmatch(r"(.+),walltime=([\d:]+)", spec.get("resources", ""))
        if not m or not spec.get("command"):
            raise ValueError("resources must end with ,walltime=H:MM:SS and command is required")
        reservation = spec.get("reservation")
        start = datetime.strptime(reservation, "%Y-%m-%d %H:%M:%S").replace(tzinfo=PARIS).timestamp() \
            if reservation else None
        types = tuple(spec.get("types", ()))
        properties = spec.get("properties")
        if banned := [c.name for c in self.takes.values()       # admission: clusters this job may not have
                      if not c.takes(spec.get("queue"), "deploy" in types, "exotic" in types)]:
            off = "cluster NOT IN (%s)" % ",".join(f"'{c}'" for c in banned)
            properties = f"({properties}) AND {off}" if properties else off
        try:
            job = self.tb.scheduler.submit(site, m[1], parse_walltime(m[2]), spec.get("name", ""), spec["command"],
                                           properties, types, spec.get("queue"), spec.get("project"), start)
        except UserError as e:          # oarsub's refusal, which OAR's API answers with a 400
            raise ValueError(str(e)) from None
        return self.job(site, job)

    def delete(self, site, job) -> dict:
        j = self.tb.scheduler.job(site, int(job))
        if not j.live:                  # oardel refuses a job that has ended (assumed: the OAR API's answer)
            raise ValueError(f"job {job} is already {j.state}")
        self.tb.scheduler.delete(site, int(job))
        return {}

    def walltime(self, site, job, spec) -> dict:
        """A change of a running job's walltime, `+H:MM:SS` or an absolute `H:MM:SS`: accepted
        (202), applied by OAR at its next pass."""
        j, change = self.tb.scheduler.job(site, int(job)), str(spec.get("walltime", ""))
        if j.state != "running":
            raise ValueError(f"job {job} is {j.state}: only a running job's walltime can change")
        more = parse_walltime(change[1:]) if change.startswith("+") else parse_walltime(change) - j.walltime_s
        if more > 0:
            self.tb.scheduler.extend(site, int(job), more)
        return {"status": "Accepted", "walltime": change}

    # -- deployments --------------------------------------------------------------------------------
    def deploy(self, site, spec) -> dict:
        """A deployment of nodes the caller holds in running deploy jobs (what Kadeploy's
        rights allow), as deployments_controller.rb create answers: 201, or 400."""
        nodes = self.tb.nodes(",".join(spec.get("nodes") or []) or None)
        if not spec.get("nodes") or {n.site for n in nodes} != {site}:
            raise ValueError(f"nodes must be nodes of {site}")
        held = {h for h, j in self.tb.scheduler.holders(site).items() if "deploy" in j.types}
        if outside := [h for h in nodes.hostnames() if h not in held]:
            raise ValueError(f"The deployment you are trying to submit is not valid: {', '.join(outside)} "
                             "not reserved in a running deploy job")
        uid = "D-" + uuid.uuid4().hex[:12]
        record = {"uid": uid, "site_uid": site, "status": "processing", "nodes": nodes.hostnames(),
                  "environment": spec.get("environment"), "user_uid": self.user, "created_at": int(time.time()),
                  **{k: spec[k] for k in ("arch", "version") if k in spec}}
        with self.lock:
            self.deployments[uid] = record

        def work():
            outcomes = self.tb.reimage(nodes, "debian12-g5kdeploy")
            with self.lock:
                if record["status"] == "canceled":
                    return
                record["result"] = {h: {"state": "OK" if o.ok else "KO", "macro": "", "micro": "",
                                        "error": o.error} for h, o in outcomes.items()}
                record["status"] = "terminated"
        threading.Thread(target=work, daemon=True).start()
        return dict(record)

    def deployments_of(self, site, query) -> dict:
        """The site's deployments, newest first, of `user` and `status` when asked (deployments_controller.rb index)."""
        first = {k: v[0] for k, v in query.items()}
        with self.lock:
            found = [dict(d) for d in self.deployments.values() if d["site_uid"] == site
                     and first.get("user", d["user_uid"]) == d["user_uid"] and first.get("status", d["status"]) == d["status"]]
        found.sort(key=lambda d: -d["created_at"])
        return _items(found[:int(first.get("limit", LIMIT))])

    def deployment(self, site, uid) -> dict:
        with self.lock:
            return dict(self.deployments[uid])

    def cancel(self, site, uid) -> dict:
        """DELETE of a deployment still processing: canceled (202); else nothing changes."""
        with self.lock:
            record = self.deployments[uid]
            if record["status"] == "processing":
                record["status"] = "canceled"
            return dict(record)


def _items(items: list) -> dict:
    return {"items": items, "total": len(items), "offset": 0}


LIMIT = 50
# OAR's job states, lower-cased (how the API reports them) -> as stored (what `state=` matches)
OAR_STATES = {s.lower(): s for s in ("Waiting", "Hold", "toLaunch", "toError", "toAckReservation", "Launching",
                                     "Running", "Suspended", "Resuming", "Finishing", "Terminated", "Error")}


def _job_json(j: Job, user: str, nodes: bool = True) -> dict:
    return {"uid": j.id, "site": j.site, "name": j.name, "user": user, "state": j.state, "types": list(j.types),
            "started_at": int(j.start or 0), "walltime": j.walltime_s, "type": "job"} | \
        ({"assigned_nodes": j.hosts} if nodes else {})


ROUTES = [
    ("GET", r"/sites", lambda a, m, q, b: a.sites()),
    ("GET", r"/sites/(\w+)", lambda a, m, q, b: a.site(m[1])),
    ("GET", r"/sites/(\w+)/clusters", lambda a, m, q, b: a.clusters(m[1], q)),
    ("GET", r"/sites/(\w+)/status", lambda a, m, q, b: a.status(m[1])),
    ("GET", r"/sites/(\w+)/clusters/([\w-]+)/nodes", lambda a, m, q, b: a.cluster_nodes(m[1], m[2])),
    ("GET", r"/sites/(\w+)/jobs", lambda a, m, q, b: a.jobs(m[1], q)),
    ("POST", r"/sites/(\w+)/jobs", lambda a, m, q, b: a.submit(m[1], b)),
    ("GET", r"/sites/(\w+)/jobs/(\d+)", lambda a, m, q, b: a.job(m[1], m[2])),
    ("DELETE", r"/sites/(\w+)/jobs/(\d+)", lambda a, m, q, b: a.delete(m[1], m[2])),
    ("POST", r"/sites/(\w+)/jobs/(\d+)/walltime", lambda a, m, q, b: a.walltime(m[1], m[2], b)),
    ("POST", r"/sites/(\w+)/deployments", lambda a, m, q, b: a.deploy(m[1], b)),
    ("GET", r"/sites/(\w+)/deployments", lambda a, m, q, b: a.deployments_of(m[1], q)),
    ("GET", r"/sites/(\w+)/deployments/([\w-]+)", lambda a, m, q, b: a.deployment(m[1], m[2])),
    ("DELETE", r"/sites/(\w+)/deployments/([\w-]+)", lambda a, m, q, b: a.cancel(m[1], m[2])),
]


class Handler(BaseHTTPRequestHandler):
    api: Api

    def _serve(self):
        url = urlsplit(self.path)
        if not self._authorized():
            return self._reply(401, {"code": 401, "message": "Unauthorized"})
        path = url.path[len(PREFIX):] if url.path.startswith(PREFIX) else None
        for verb, pattern, fn in ROUTES:
            if verb == self.command and path is not None and (m := re.fullmatch(pattern, path.rstrip("/"))):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                    out = fn(self.api, m, parse_qs(url.query), body)
                except KeyError as e:
                    return self._reply(404, {"code": 404, "message": f"not found: {e}"})
                except (ValueError, json.JSONDecodeError) as e:
                    return self._reply(400, {"code": 400, "message": str(e)})
                except Exception as e:  # the API answers 500, as the real one would
                    return self._reply(500, {"code": 500, "message": str(e)})
                code = 202 if verb == "DELETE" or path.endswith("/walltime") else 201 if verb == "POST" else 200
                return self._reply(code, out)
        self._reply(404, {"code": 404, "message": f"no route {self.command} {url.path}"})

    do_GET = do_POST = do_DELETE = _serve

    def _authorized(self) -> bool:
        expected = base64.b64encode(f"{self.api.user}:{self.api.password}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {expected}"

    def _reply(self, code: int, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:   # quiet
        pass


def serve(testbed: LocalTestbed, user: str, password: str, port: int = 0, clusters: dict | None = None) \
        -> ThreadingHTTPServer:
    """Start the API on 127.0.0.1:<port> (0: any free one) in a thread; `.shutdown()` ends it.
    `clusters`: Reference API facts per cluster, e.g. {"graphene": {"exotic": True}}."""
    handler = type("BoundHandler", (Handler,), {"api": Api(testbed, user, password, clusters)})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    """python -m g5kdeploy.testbed.local.g5k_api [PORT]: serve the up testbed (Ctrl-C ends) with a
    fresh password; prints the python-grid5000 configuration that reaches it."""
    import secrets
    import sys
    import time
    password = secrets.token_urlsafe(18)
    server = serve(LocalTestbed.attach(), "g5kdeploy", password, int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
    print(f"uri: http://127.0.0.1:{server.server_port}/stable\nusername: g5kdeploy\npassword: {password}\n"
          "gateway: null", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
