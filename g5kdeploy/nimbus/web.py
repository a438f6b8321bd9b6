"""How the cloud's services start: `python3 -m g5kdeploy.nimbus.<role> [cloud.json]`."""
from __future__ import annotations

import logging
import sys
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from g5kdeploy.nimbus.config import CONFIG, Cloud
from g5kdeploy.web import serve

__all__ = ["main", "serve"]


def main(start: Callable[[Cloud], ThreadingHTTPServer]) -> None:
    """`python3 -m g5kdeploy.nimbus.<role> [cloud.json]`: load the cloud, serve forever."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start(Cloud.load(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG)).serve_forever()
