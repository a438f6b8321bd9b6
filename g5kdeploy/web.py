"""The small HTTP plumbing our services share (standard library): the clouds' EC2 API and
context broker, and Resilin's EMR API."""
from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

# (method, path, query, headers, body) -> (status, content type, body)
Answer = Callable[[str, str, str, dict, bytes], tuple[int, str, bytes]]


MAX_BODY = 1 << 20        # bytes: EC2's largest request (16 KiB of user data) with room to spare
IDLE_TIMEOUT_S = 30       # a connection that sends nothing for this long is closed


def serve(answer: Answer, port: int, log: logging.Logger, idle_timeout: float = IDLE_TIMEOUT_S,
          host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """A threaded server on `host` (every address of the node by default), `answer` handling
    each request. A body that is larger than MAX_BODY or of no stated length is refused
    before it is read."""
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
