"""Broadcast chain (thesis §3.5.1, Kastafior's design): the repository streams an image to
the first VMM, which writes it and forwards each chunk to the next VMM as soon as it has
it, and so on, over plain TCP. Every VMM checks the image's SHA-256 while it streams, keeps
the file only if it matches, then sends its upstream the outcomes of itself and the rest of
the chain, so the repository learns every VMM's outcome and completion time. The daemon
also tells which image digest a VMM's cache holds (`digests`), without an ssh session.

Each VMM runs the chain daemon, `python3 -m g5kdeploy.nimbus.chain /etc/nimbus/chain.json`
(port, token, root), started by the nimbus::vmm recipe, so that a propagation costs no ssh
session. Streams must carry the cloud's token and write under the root only. The data is
not encrypted (as Kastafior, Kascade and execo's ChainPut): for a testbed's private network.
Standard library only: it runs on the nodes."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import socketserver
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from g5kdeploy.files import write_atomic
from g5kdeploy.nimbus.config import CHAIN_PORT, LIB

PORT = CHAIN_PORT
CHUNK = 256 * 1024            # bytes read, written and forwarded at a time
IDLE_TIMEOUT_S = 60           # a silent upstream, or a next hop that does not answer, fails the stream
REPORT_TIMEOUT_S = 600        # how long a VMM waits for the outcomes of the rest of the chain
MAX_HEAD = 256 * 1024         # longest head frame (a chain of ~5,000 hops) read before the token is checked
MAX_REPORT = 16 << 20         # longest outcome list read from a hop we opened

log = logging.getLogger("nimbus.chain")


class ChainError(RuntimeError):
    pass


def _frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        got = sock.recv(n - len(out))
        if not got:
            raise ChainError("connection closed early")
        out += got
    return bytes(out)


def _read_frame(sock: socket.socket, limit: int = MAX_REPORT):
    length = struct.unpack("!I", _read_exact(sock, 4))[0]
    if length > limit:
        raise ChainError(f"refused: a {length}-byte frame (at most {limit})")
    return json.loads(_read_exact(sock, length))


def _checked_head(head) -> dict:
    """A stream's or a query's head, refused unless its fields have their types."""
    if not isinstance(head, dict) or not isinstance(head.get("token"), str) or not isinstance(head.get("path"), str):
        raise ChainError("refused: the head is not an object with a token and a path")
    if head.get("op") == "digest":
        return head
    size, digest, hops = head.get("size"), head.get("sha256"), head.get("next")
    if type(size) is not int or size < 0 or not isinstance(digest, str) or len(digest) != 64 \
            or not isinstance(hops, list) or not all(
                isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) and type(h[1]) is int for h in hops):
        raise ChainError("refused: a stream head needs size, sha256 and next [[host, port], ...]")
    return head


def _target(root: Path, path: str) -> Path:
    out = (root / path).resolve()
    if not out.is_relative_to(root.resolve()) or out == root.resolve():
        raise ChainError(f"path {path!r} is outside {root}")
    return out


def _digest_file(image: Path) -> Path:
    return image.with_name(image.name.removesuffix(".img") + ".sha256")


def install(part: Path, out: Path, sha256: str, record: bool = True) -> None:
    """A checked copy takes its place; `record` writes its digest beside it, with the file's
    size and mtime (what cache lookups read); without it, a digest of an older copy goes."""
    os.replace(part, out)
    digest_file = _digest_file(out)
    if not record:
        digest_file.unlink(missing_ok=True)
        return
    st = out.stat()
    write_atomic(digest_file, f"{sha256} {st.st_size} {st.st_mtime_ns}\n")


def recorded_digest(image: Path) -> str | None:
    """The digest recorded beside an image, if the image is still the file it was taken of
    (same size and mtime); None otherwise."""
    try:
        sha256, size, mtime = _digest_file(image).read_text().split()
        st = image.stat()
    except (OSError, ValueError):
        return None
    return sha256 if (st.st_size, st.st_mtime_ns) == (int(size), int(mtime)) else None


def handle(conn: socket.socket, token: str, root: Path, chunk: int = CHUNK) -> list[dict]:
    """One connection to the daemon: a digest query, or a stream to relay."""
    conn.settimeout(IDLE_TIMEOUT_S)
    try:
        head = _checked_head(_read_frame(conn, MAX_HEAD))
        if not token or not hmac.compare_digest(head["token"].encode(), token.encode()):
            raise ChainError("refused: wrong token")
        if head.get("op") == "digest":
            conn.sendall(_frame({"sha256": recorded_digest(_target(root, head["path"]))}))
            return []
        out = _target(root, head["path"])
        conn.sendall(_frame({"accepted": True}))
    except (OSError, ChainError, ValueError, KeyError) as e:
        outcome = {"host": socket.gethostname(), "ok": False, "bytes": 0, "error": str(e)}
        try:
            conn.sendall(_frame({"refused": [outcome]}))
        except OSError:
            pass
        return [outcome]
    return relay(conn, head, out, chunk)


def _open(hop, head: dict) -> tuple[socket.socket | None, list[dict]]:
    """Offer a stream to a hop: (its socket, []) if it accepts, (None, its outcomes) if not."""
    s = socket.create_connection(tuple(hop), timeout=IDLE_TIMEOUT_S)
    try:
        s.sendall(_frame(head))
        answer = _read_frame(s)
    except BaseException:
        s.close()
        raise
    if answer.get("accepted"):
        return s, []
    s.close()
    return None, answer.get("refused", [])


def relay(up: socket.socket, head: dict, out: Path, chunk: int = CHUNK) -> list[dict]:
    """Serve one accepted stream: keep it as `out`, pass it on, gather the outcomes; send
    them upstream too."""
    me = {"host": socket.gethostname(), "ok": False, "bytes": 0, "error": "", "start": time.time()}
    report, down, part = [], None, None
    try:
        if head["next"]:
            try:
                down, report = _open(head["next"][0], {**head, "next": head["next"][1:]})
            except (OSError, ChainError, ValueError) as e:
                down, report = None, []
                me["error"] = f"next hop {head['next'][0][0]}: {e}"
        part = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
        me["bytes"], digest = _stream(up, down, part, head["size"], chunk, me)
        if digest != head["sha256"]:
            raise ChainError(f"SHA-256 mismatch: got {digest}, expected {head['sha256']}")
        install(part, out, digest, record=head.get("record", False))
        me.update(ok=True, end=time.time())
    except (OSError, ChainError, ValueError, KeyError, TypeError) as e:
        me.update(error=str(e) if isinstance(e, ChainError) else f"{type(e).__name__}: {e}", end=time.time())
        if part is not None:
            part.unlink(missing_ok=True)
    if down is not None:
        try:
            down.settimeout(REPORT_TIMEOUT_S)
            report = _read_frame(down)
        except (OSError, ChainError, ValueError) as e:
            me["error"] = me["error"] or f"no outcome from the next hop: {e}"
        down.close()
    outcomes = [me] + report
    try:
        up.sendall(_frame(outcomes))
    except OSError:
        pass
    return outcomes


def _stream(up, down, part: Path, size: int, chunk: int, me: dict) -> tuple[int, str]:
    """Copy `size` bytes from up to the file and to down (while it lasts); (bytes, sha256)."""
    digest, done = hashlib.sha256(), 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while done < size:
            n = up.recv_into(buf, min(chunk, size - done))
            if not n:
                raise ChainError(f"upstream closed after {done} of {size} bytes")
            if down is not None:
                try:
                    down.sendall(view[:n])
                except OSError as e:          # keep our own copy; the VMMs after us report the loss
                    me["error"] = f"next hop lost: {e}"
                    down.close()
                    down = None
            os.write(fd, view[:n])
            digest.update(view[:n])
            done += n
    finally:
        os.close(fd)
    return done, digest.hexdigest()


def send(source: str, hops: list[tuple[str, int]], path: str, sha256: str, token: str,
         record: bool = False) -> list[dict]:
    """Stream `source` to `path` (under each daemon's root) on every (host, port) of the
    chain hops[0] -> hops[1] -> ...; `record` also writes `<name>.sha256` beside it. Returns
    one outcome per hop, in order: host, ok, bytes, start, end (epoch s), error."""
    hosts = [h for h, _ in hops]
    head = {"token": token, "path": path, "size": os.path.getsize(source), "sha256": sha256, "record": record,
            "next": [list(hop) for hop in hops[1:]]}
    try:
        s, outcomes = _open(hops[0], head)
        if s is not None:
            with s, open(source, "rb") as f:
                s.sendfile(f)
                s.settimeout(REPORT_TIMEOUT_S)
                outcomes = _read_frame(s)
    except (OSError, ChainError, ValueError) as e:
        outcomes = [{"host": hosts[0], "ok": False, "bytes": 0, "error": f"{type(e).__name__}: {e}"}]
    for o, h in zip(outcomes, hosts):
        o["host"] = h                         # as the caller names it
    lost = outcomes[-1]["host"] if outcomes else hosts[0]
    return outcomes + [{"host": h, "ok": False, "bytes": 0, "error": f"the chain broke before it (at {lost})"}
                       for h in hosts[len(outcomes):]]


def digests(hosts: list[str], path: str, token: str, port: int = PORT) -> dict[str, str | None]:
    """The digest recorded beside `path` on each host (None: no such file, or no answer)."""
    def ask(host: str) -> str | None:
        try:
            with socket.create_connection((host, port), timeout=IDLE_TIMEOUT_S) as s:
                s.sendall(_frame({"token": token, "op": "digest", "path": path}))
                answer = _read_frame(s)
            return answer.get("sha256") if isinstance(answer, dict) else None
        except (OSError, ChainError, ValueError):
            return None
    with ThreadPoolExecutor(min(16, len(hosts)) or 1) as pool:
        return dict(zip(hosts, pool.map(ask, hosts)))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(config: dict) -> _Server:
    """The VMM's chain daemon: one thread per stream."""
    token, root = config["token"], Path(config.get("root", LIB))
    if not token:
        raise ValueError("the chain daemon needs a token: every stream must carry it")

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            outcomes = handle(self.request, token, root)
            if outcomes:
                log.info("%s bytes from %s: %s", outcomes[0]["bytes"], self.client_address[0],
                         "ok" if outcomes[0]["ok"] else outcomes[0]["error"])
    return _Server((config.get("address", ""), int(config.get("port", PORT))), Handler)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "/etc/nimbus/chain.json").read_text())).serve_forever()


if __name__ == "__main__":
    main()
