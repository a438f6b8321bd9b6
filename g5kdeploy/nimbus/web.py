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


def serve(answer: Answer, port: int, log: logging.Logger) -> ThreadingHTTPServer:
    """A threaded server on every address of the node, `answer` handling each request."""
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, ctype, out = answer(self.command, url.path, url.query, dict(self.headers), body)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
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
