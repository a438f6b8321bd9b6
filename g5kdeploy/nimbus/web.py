"""The small HTTP plumbing the API and the broker share (standard library)."""
from __future__ import annotations

import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from g5kdeploy.nimbus.config import CONFIG, Cloud

# (method, path, query, headers, body) -> (status, content type, body)
Answer = Callable[[str, str, str, dict, bytes], tuple[int, str, bytes]]


MAX_BODY = 1 << 20        # bytes: EC2's largest request (16 KiB of user data) with room to spare
IDLE_TIMEOUT_S = 30       # a connection that sends nothing for this long is closed


def serve(answer: Answer, port: int, log: logging.Logger, idle_timeout: float = IDLE_TIMEOUT_S) -> ThreadingHTTPServer:
    """A threaded server on every address of the node, `answer` handling each request. A
    body that is larger than MAX_BODY or of no stated length is refused before it is read."""
    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout

        def _answer(self):
            url = urlsplit(self.path)
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit():
                return self._reply(400, "text/plain", b"Content-Length is not a number\n", close=True)
            if int(length) > MAX_BODY:
                return self._reply(413, "text/plain", f"bodies are at most {MAX_BODY} bytes\n".encode(), close=True)
            body = self.rfile.read(int(length))
            self._reply(*answer(self.command, url.path, url.query, dict(self.headers), body))

        def _reply(self, status: int, ctype: str, out: bytes, close: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            if close:                    # the unread body must not be taken for the next request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _answer

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    return server


def main(start: Callable[[Cloud], ThreadingHTTPServer]) -> None:
    """`python3 -m g5kdeploy.nimbus.<role> [cloud.json]`: load the cloud, serve forever."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start(Cloud.load(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG)).serve_forever()
