"""AWS Signature Version 4 checks for requests to our EC2 endpoint (standard library only)."""
from __future__ import annotations

import functools
import hashlib
import hmac
import re
import urllib.parse
from datetime import datetime, timedelta, timezone

ALGORITHM = "AWS4-HMAC-SHA256"
AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
                  r"SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})")
MAX_SKEW = timedelta(minutes=15)


class SignatureError(Exception):
    """The request is unsigned, signed by an unknown key, or its signature does not match."""


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    return _hmac(_hmac(_hmac(k, region), service), "aws4_request")


def _canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    q = functools.partial(urllib.parse.quote, safe="-_.~")
    return "&".join(f"{q(k)}={q(v)}" for k, v in sorted(pairs))


def canonical_request(method: str, path: str, query: str, headers: dict[str, str], signed: list[str],
                      body: bytes) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    canon_headers = "".join(f"{h}:{' '.join(lower.get(h, '').split())}\n" for h in signed)
    payload = lower.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    return "\n".join([method, urllib.parse.quote(path or "/", safe="/-_.~"), _canonical_query(query),
                      canon_headers, ";".join(signed), payload])


def verify(method: str, path: str, query: str, headers: dict[str, str], body: bytes,
           secrets: dict[str, str], now: datetime | None = None) -> str:
    """The access key that signed this request; SignatureError when it is not validly signed."""
    lower = {k.lower(): v for k, v in headers.items()}
    m = AUTH.fullmatch(lower.get("authorization", "").strip())
    if not m:
        raise SignatureError("the request is not signed with AWS Signature Version 4")
    access, date, region, service, signed, signature = m.groups()
    if access not in secrets:
        raise SignatureError(f"unknown access key {access}")
    amz_date = lower.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise SignatureError("missing or malformed X-Amz-Date") from None
    if abs((now or datetime.now(timezone.utc)) - when) > MAX_SKEW or not amz_date.startswith(date):
        raise SignatureError("the request time is too far from the server time")
    signed_list = signed.split(";")
    if "host" not in signed_list:
        raise SignatureError("the Host header must be signed")
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(
        canonical_request(method, path, query, headers, signed_list, body).encode()).hexdigest()])
    expected = hmac.new(signing_key(secrets[access], date, region, service), string_to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("the request signature does not match")
    return access
