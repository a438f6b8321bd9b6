"""Cumulus (thesis §2.3.3), the cloud's S3 image repository and object store: OpenStack
Swift from Debian, one replica on the service node, speaking S3 through its `s3api`
middleware, with the cloud's own EC2 credentials (CumulusAuth below, in Swift's pipeline).
`python3 -m g5kdeploy.nimbus.cumulus [/etc/nimbus/cloud.json]` writes Swift's configuration
and rings from the cloud's and runs its four servers, as Debian's `swift` user, until one
ends (then all do).

The S3 endpoint listens on every address of the node and takes only requests signed with
the cloud's credentials (Signature Version 2 or 4, headers or presigned URLs); the account,
container and object servers listen on the node's loopback only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from g5kdeploy.files import write_atomic
from g5kdeploy.nimbus.config import CONFIG, LIB, Cloud

ETC = Path("/etc/nimbus/cumulus")
CREDENTIALS = ETC / "credentials.json"          # access key -> secret, readable by USER only
DEVICES = LIB / "cumulus"
SWIFT_CONF = Path("/etc/swift/swift.conf")      # where Swift reads its hash and constraints, always
PORTS = {"object": 6200, "container": 6201, "account": 6202}
ACCOUNT = "AUTH_cumulus"
USER = "swift"                                  # Debian's swift package's user: the servers run as it
PIPELINE = ("catch_errors gatekeeper healthcheck proxy-logging listing_formats s3api cumulus_auth copy slo dlo "
            "proxy-logging proxy-server")


def configs(cloud: Cloud) -> dict[Path, str]:
    """Swift's configuration files for this cloud."""
    common = f"[DEFAULT]\nswift_dir = {ETC}\ndevices = {DEVICES}\nmount_check = false\nworkers = 0\nuser = {USER}\n" \
             "log_name = cumulus\n"
    out = {SWIFT_CONF: f"[swift-hash]\nswift_hash_path_prefix = {cloud.cumulus_hash[:32]}\n"
                       f"swift_hash_path_suffix = {cloud.cumulus_hash[32:]}\n\n[storage-policy:0]\nname = cumulus\n"
                       "default = yes\n\n[swift-constraints]\nmax_file_size = 53687091200\n"}
    for server, port in PORTS.items():
        out[ETC / f"{server}-server.conf"] = (common + f"bind_ip = 127.0.0.1\nbind_port = {port}\n\n"
                                              f"[pipeline:main]\npipeline = {server}-server\n\n"
                                              f"[app:{server}-server]\nuse = egg:swift#{server}\n")
    out[ETC / "proxy-server.conf"] = (
        common + f"bind_ip = 0.0.0.0\nbind_port = {cloud.cumulus_port}\n\n[pipeline:main]\npipeline = {PIPELINE}\n\n"
        "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\nerror_suppression_interval = 0\n\n"
        f"[filter:s3api]\nuse = egg:swift#s3api\nlocation = {cloud.site}\n\n"
        f"[filter:cumulus_auth]\npaste.filter_factory = g5kdeploy.nimbus.cumulus:filter_factory\n"
        f"credentials = {CREDENTIALS}\n\n"
        + "".join(f"[filter:{f}]\nuse = egg:swift#{f.replace('-', '_')}\n\n"
                  for f in ("catch_errors", "gatekeeper", "healthcheck", "proxy-logging", "listing_formats", "copy",
                            "slo", "dlo")))
    return out


def rings() -> None:
    """One-replica rings of one device (d1), built once."""
    from swift.common.ring import RingBuilder
    for server, port in PORTS.items():
        ring = ETC / f"{server}.ring.gz"
        if ring.exists():
            continue
        builder = RingBuilder(10, 1, 1)
        builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port, "device": "d1", "weight": 100})
        builder.rebalance()
        builder.get_ring().save(str(ring))


def configure(cloud: Cloud) -> None:
    """Swift's files, and the cloud's credentials for the proxy (which runs as USER)."""
    import pwd
    swift = pwd.getpwnam(USER)
    ETC.mkdir(parents=True, exist_ok=True)
    for path, text in configs(cloud).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, 0o644)
    write_atomic(CREDENTIALS, json.dumps(cloud.credentials), 0o600)
    os.chown(CREDENTIALS, swift.pw_uid, swift.pw_gid)
    rings()
    for d in (DEVICES / "d1", Path("/var/cache/swift")):
        d.mkdir(parents=True, exist_ok=True)
    for top in (DEVICES, Path("/var/cache/swift")):
        for where, dirs, files in os.walk(top):
            for name in (where, *(os.path.join(where, f) for f in dirs + files)):
                os.lchown(name, swift.pw_uid, swift.pw_gid)
    DEVICES.chmod(0o700)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    configure(Cloud.load(Path(argv[0]) if argv else CONFIG))
    servers = [subprocess.Popen([f"/usr/bin/swift-{s}-server", str(ETC / f"{s}-server.conf")], user=USER,
                                group=USER, extra_groups=[])       # workers = 0: Swift would not drop root
               for s in (*PORTS, "proxy")]

    def stop(*_):
        for p in servers:
            if p.poll() is None:
                p.terminate()
    signal.signal(signal.SIGTERM, stop)
    os.wait()                                   # the first server to end ends them all
    stop()
    for p in servers:
        p.wait()
    sys.exit(1)


# -- in Swift's proxy: the cloud's credentials as S3 credentials -----------------------------
class CumulusAuth:
    """Swift auth middleware: an S3 request whose signature (checked by s3api against the
    cloud's secret for its access key) is valid owns the cloud's account; nothing else
    gets in."""

    def __init__(self, app, credentials: dict[str, str]):
        self.app, self.credentials = app, credentials

    def __call__(self, env, start_response):
        if env.get("swift.authorize_override"):
            return self.app(env, start_response)
        s3 = env.get("s3api.auth_details")
        secret = self.credentials.get(s3["access_key"]) if s3 else None
        if secret and s3["check_signature"](secret):
            prefix, path = f"/v1/{s3['access_key']}", env["PATH_INFO"]     # s3api's: /v1/<access key>/...
            if path == prefix or path.startswith(prefix + "/"):
                env["PATH_INFO"] = f"/v1/{ACCOUNT}" + path[len(prefix):]
            env["REMOTE_USER"] = s3["access_key"]
            env["swift.authorize"] = self.authorize
        else:
            env["swift.authorize"] = self.denied
        return self.app(env, start_response)

    def authorize(self, req):
        try:
            _, account, _, _ = req.split_path(1, 4, True)
        except ValueError:
            return self.denied(req)
        if account != ACCOUNT:
            return self.denied(req)
        req.environ["swift_owner"] = True
        return None

    def denied(self, req):
        from swift.common.swob import HTTPForbidden, HTTPUnauthorized
        return (HTTPForbidden if req.remote_user else HTTPUnauthorized)(request=req)


def filter_factory(global_conf, **local_conf):
    credentials = json.loads(Path(local_conf.get("credentials", CREDENTIALS)).read_text())
    return lambda app: CumulusAuth(app, credentials)


if __name__ == "__main__":
    main()
