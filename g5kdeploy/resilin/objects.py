"""The job flow's objects in its cloud's storage (Cumulus, S3 API), from the nodes of its
cluster: what a URL names, a boto3 client for it, whole objects and byte ranges. The URLs
are those EMR takes (`s3://bucket/key`, `s3n://`, `s3a://`) and the thesis's
`cumulus://bucket.host:port/key` for a Cumulus of its own. Credentials and the default
endpoint come from the cluster's `s3.json` (root's alone on the node).

`python3 -m g5kdeploy.resilin.objects get URL FILE` (run in the node's cluster directory)."""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("s3", "s3n", "s3a", "cumulus")
URL = re.compile(r"^(s3|s3n|s3a|cumulus)://([^/]+)(?:/(.*))?$")


@dataclass(frozen=True)
class Location:
    endpoint: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_url(text: str) -> bool:
    return bool(URL.match(text))


def parse(url: str, endpoint: str) -> Location:
    """Where an object URL points; `endpoint` is the job flow's Cumulus (for s3:// URLs)."""
    m = URL.match(url)
    if not m:
        raise ValueError(f"{url!r} is not an object URL: use s3://bucket/key (or cumulus://bucket.host:port/key)")
    scheme, authority, key = m.group(1), m.group(2), m.group(3) or ""
    if scheme == "cumulus":
        bucket, dot, where = authority.partition(".")
        if not dot or ":" not in where:
            raise ValueError(f"{url!r}: a cumulus URL is cumulus://bucket.host:port/key")
        return Location(f"http://{where}", bucket, key)
    return Location(endpoint, authority, key)


def client(config: dict, endpoint: str | None = None):
    """boto3's S3 client (path-style) for `endpoint` (default: the job flow's Cumulus)."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint or config["endpoint"], region_name=config["region"],
                        aws_access_key_id=config["access_key"], aws_secret_access_key=config["secret_key"],
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}))


def listing(config: dict, where: Location) -> list[tuple[str, int]]:
    """(key, size) of every object under a prefix (or the one object it names), in key order;
    Hadoop's hidden files (names starting with _ or .) are left out, as its input formats do."""
    s3, out = client(config, where.endpoint), []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=where.key):
        for o in page.get("Contents", []):
            rest = o["Key"][len(where.key):]
            name = o["Key"].rsplit("/", 1)[-1]
            exact = rest == ""
            inside = where.key == "" or where.key.endswith("/") or rest.startswith("/")
            if (exact or inside) and not name.startswith(("_", ".")):
                out.append((o["Key"], o["Size"]))
    return sorted(out)


def get(config: dict, url: str, dest: Path) -> Path:
    where = parse(url, config["endpoint"])
    client(config, where.endpoint).download_file(where.bucket, where.key, str(dest))
    return dest


def read_range(config: dict, where: Location, start: int, end: int) -> bytes:
    """Bytes [start, end) of one object (an HTTP Range request, as Hadoop's S3 input does)."""
    if end <= start:
        return b""
    r = client(config, where.endpoint).get_object(Bucket=where.bucket, Key=where.key, Range=f"bytes={start}-{end - 1}")
    return r["Body"].read()


def load_config(directory: Path | str = ".") -> dict:
    return json.loads((Path(directory) / "s3.json").read_text())


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "get":
        print("usage: python3 -m g5kdeploy.resilin.objects get URL FILE", file=sys.stderr)
        return 2
    try:
        get(load_config(), argv[1], Path(argv[2]))
    except Exception as e:      # one line for the node script's error message
        print(f"cannot fetch {argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
