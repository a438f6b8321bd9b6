"""What the cloud's API asks of its Cumulus (on the same node): an object's size, and the
object itself into a file — S3 requests signed with the cloud's own credentials."""
from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from g5kdeploy import signature

CHUNK = 1 << 20


class NotFound(Exception):
    """No such bucket or object."""


class Unavailable(Exception):
    """Cumulus does not answer (or answers an error)."""


def _open(cloud, method: str, bucket: str, key: str, timeout: float = 30):
    url = f"{cloud.cumulus}/{urllib.parse.quote(bucket)}/{urllib.parse.quote(key)}"
    access, secret = next(iter(cloud.credentials.items()))
    headers = signature.sign(method, url, access, secret, cloud.site)
    try:
        return urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFound(f"{bucket}/{key}") from None
        raise Unavailable(f"Cumulus answered {e.code} for {bucket}/{key}: {e.read()[:200]!r}") from None
    except OSError as e:                # refused, reset, timed out
        raise Unavailable(f"Cumulus at {cloud.cumulus} does not answer: {e}") from None


def head(cloud, bucket: str, key: str) -> int:
    """The object's size in bytes (NotFound if there is none)."""
    with _open(cloud, "HEAD", bucket, key) as r:
        return int(r.headers["Content-Length"])


def download(cloud, bucket: str, key: str, path: Path) -> int:
    """Write the object into `path`; its size."""
    n = 0
    with _open(cloud, "GET", bucket, key, timeout=120) as r, open(path, "wb") as f:
        while chunk := r.read(CHUNK):
            f.write(chunk)
            n += len(chunk)
    return n
