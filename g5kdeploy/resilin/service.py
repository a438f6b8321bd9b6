"""Resilin's endpoint: the EMR API for the whole federation, on the frontend (the thesis's
Resilin was a web service beside the clouds, Fig 4.1: it holds every cloud's credentials
and reaches them through their public APIs, so job flows can span clouds).

A request must be signed (SigV4, service `elasticmapreduce`) with the credentials of one of
the clouds; that cloud is the job flow's default (its instances, its Cumulus). It listens on
loopback unless told otherwise. `python3 -m g5kdeploy.resilin.service --clouds FILE
[--port P] [--testbed local|g5k]`; SIGTERM terminates every job flow still alive, then
exits."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from g5kdeploy import signature, web
from g5kdeploy.resilin.emr import EMR, EMRError
from g5kdeploy.resilin.flow import Clouds, Runner

log = logging.getLogger("resilin.api")
PORT = 8777
TARGET = "ElasticMapReduce."
CONTENT = "application/x-amz-json-1.1"


class Service:
    def __init__(self, clouds: dict[str, dict], placement: str | None = None, keys: Path | None = None,
                 owner: str | None = None):
        self.runner = Runner(Clouds(clouds, keys, owner))
        self.emr = EMR(self.runner, placement)
        self.keys = {c["access_key"]: site for site, c in clouds.items()}

    def signer(self, method: str, path: str, query: str, headers: dict, body: bytes) -> str:
        """The cloud whose credentials signed the request."""
        lower = {k.lower(): v for k, v in headers.items()}
        m = signature.AUTH.match(lower.get("authorization", ""))
        site = self.keys.get(m.group(1)) if m else None
        if site is None:
            raise EMRError("UnrecognizedClientException", "The security token included in the request is invalid.")
        c = self.runner.clouds.entries[site]
        try:
            signature.verify(method, path, query, headers, body, {c["access_key"]: c["secret_key"]}, c["region"],
                             service="elasticmapreduce")
        except signature.SignatureError as e:
            raise EMRError("InvalidSignatureException", str(e)) from None
        return site

    def answer(self, method: str, path: str, query: str, headers: dict, body: bytes) -> tuple[int, str, bytes]:
        try:
            if method != "POST":
                raise EMRError("UnknownOperationException", "EMR takes POST requests (JSON 1.1)")
            site = self.signer(method, path, query, headers, body)
            target = {k.lower(): v for k, v in headers.items()}.get("x-amz-target", "")
            action = target[len(TARGET):] if target.startswith(TARGET) else ""
            handler = getattr(self.emr, action, None) if action[:1].isupper() else None
            if handler is None:
                raise EMRError("UnknownOperationException", f"unknown operation {target!r}")
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise EMRError("SerializationException", "the body is not JSON") from None
            if not isinstance(params, dict):
                raise EMRError("SerializationException", "the body is not a JSON object")
            out = handler(params, site)
            return 200, CONTENT, json.dumps(out).encode()
        except EMRError as e:
            return e.status, CONTENT, json.dumps({"__type": e.kind, "message": e.message}).encode()
        except (ValueError, TypeError, KeyError, AttributeError) as e:     # a member of the wrong type
            return 400, CONTENT, json.dumps({"__type": "ValidationException", "message": f"invalid request: {e}"}).encode()
        except Exception as e:
            log.exception("request failed")
            return 500, CONTENT, json.dumps({"__type": "InternalServerError", "message": str(e)}).encode()


def serve(service: Service, port: int = PORT, host: str = "127.0.0.1", background: bool = False) -> ThreadingHTTPServer:
    """The endpoint's server (port 0: any free one); `background`: already serving, in a
    thread of this process (an experiment's or a test's own endpoint)."""
    server = web.serve(service.answer, port, log, host=host)
    if background:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m g5kdeploy.resilin.service")
    parser.add_argument("--clouds", required=True, type=Path)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--testbed", default="local")
    parser.add_argument("--placement", choices=("vmm", "instance"), help="where engines run (default: vmm under TCG)")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from g5kdeploy import remote
    from g5kdeploy.testbed import open as open_testbed
    remote.reach(open_testbed(a.testbed))
    service = Service(json.loads(a.clouds.read_text()), a.placement, home(), owner())
    service.runner.reap()                     # what a killed run of the daemon left
    server = serve(service, a.port, a.host)
    stopping = threading.Event()

    def stop(*_):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("EMR endpoint http://%s:%d/", a.host, a.port)
    server.serve_forever()
    service.runner.shutdown()
    return 0



# the endpoint as a daemon of the frontend (invoke resilin-up / resilin-down) -------------------
def home() -> Path:
    from g5kdeploy import HOME, work_dir
    return work_dir(HOME / "resilin")


def owner() -> str:
    """The daemon's name in what it makes, the same across its runs (HOME/resilin/owner)."""
    import secrets
    from g5kdeploy.files import write_atomic
    path = home() / "owner"
    if not path.exists():
        write_atomic(path, secrets.token_hex(4), 0o600)
    return path.read_text().strip()


def reap(clouds: Path, testbed: str = "local") -> int:
    """What a killed daemon left in the clouds (its instances, their engines, its key pairs);
    how many instances. The daemon does it itself when it starts again."""
    from g5kdeploy import remote
    from g5kdeploy.testbed import open as open_testbed
    remote.reach(open_testbed(testbed))
    return Runner(Clouds(json.loads(clouds.read_text()), home(), owner())).reap()


def running() -> dict | None:
    """The daemon's pid and endpoint, if it is up."""
    import os
    state = home() / "endpoint.json"
    if not state.exists():
        return None
    info = json.loads(state.read_text())
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        state.unlink(missing_ok=True)
        return None
    return info


def start(clouds: Path, port: int = PORT, host: str = "127.0.0.1", testbed: str = "local",
          timeout: float = 120) -> dict:
    """Start the daemon (or find it up); its pid and endpoint once it answers (after it has
    reaped what a killed run of it left)."""
    import os
    import socket
    import subprocess
    import time
    from g5kdeploy.errors import UserError
    from g5kdeploy.files import write_atomic
    if (info := running()) is not None:
        return info
    if not clouds.exists():
        raise UserError(f"no clouds file {clouds}: deploy clouds first (invoke deploy-nimbus)")
    log = home() / "service.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "g5kdeploy.resilin.service", "--clouds", str(clouds),
                                 "--port", str(port), "--host", host, "--testbed", testbed],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    os.kill(proc.pid, 15)
                tail = log.read_text()[-400:].strip().splitlines()
                raise UserError(f"Resilin did not start: {tail[-1] if tail else 'no output'} (log: {log})") from None
            time.sleep(0.2)
    info = {"pid": proc.pid, "endpoint": f"http://{host}:{port}", "log": str(log)}
    write_atomic(home() / "endpoint.json", json.dumps(info), 0o600)
    return info


def stop(timeout: float = 300) -> bool:
    """SIGTERM the daemon (it terminates every job flow first) and wait for it; False if none."""
    import os
    import time
    info = running()
    if info is None:
        return False
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(info["pid"], os.WNOHANG)[0]:       # our own child (started by this process)
                break
        except ChildProcessError:
            pass
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(info["pid"], signal.SIGKILL)
    (home() / "endpoint.json").unlink(missing_ok=True)
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
