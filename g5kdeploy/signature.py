"""Who signed a request to our EC2 endpoint: AWS Signature Version 4, or Version 2 (what
EC2 clients of Nimbus's era sent), checked with the standard library only.

Version 4: the signature covers the body as received (its SHA-256 is computed here, never
taken from the client), the credential scope must name this cloud's region and service, and
a request is canonicalized as botocore's SigV4Auth does (tests/test_nimbus_api.py compares
the two). Version 2: HMAC-SHA256 (or SHA1) over the method, Host, path and every parameter
but the signature, sorted and RFC 3986-encoded, as botocore's SigV2Auth signs; a Timestamp
within 15 minutes or an Expires not passed is required."""
from __future__ import annotations

import base64
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
    """The canonical request, with the SHA-256 of the body itself as its payload hash."""
    lower = {k.lower(): v for k, v in headers.items()}
    canon_headers = "".join(f"{h}:{' '.join(lower.get(h, '').split())}\n" for h in signed)
    return "\n".join([method, urllib.parse.quote(path or "/", safe="/-_.~"), _canonical_query(query),
                      canon_headers, ";".join(signed), hashlib.sha256(body).hexdigest()])


def verify(method: str, path: str, query: str, headers: dict[str, str], body: bytes,
           secrets: dict[str, str], region: str, service: str = "ec2", now: datetime | None = None) -> str:
    """The access key that signed this request for `service` in `region` (Version 4, or
    Version 2 when its parameters say so); SignatureError when it is not validly signed."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "authorization" not in lower and b"SignatureVersion=2" in body + query.encode():
        return verify_v2(method, path, query, lower.get("host", ""), body, secrets, now)
    m = AUTH.fullmatch(lower.get("authorization", "").strip())
    if not m:
        raise SignatureError("the request is not signed with AWS Signature Version 4 or 2")
    access, date, scope_region, scope_service, signed, signature = m.groups()
    if access not in secrets:
        raise SignatureError(f"unknown access key {access}")
    if (scope_region, scope_service) != (region, service):
        raise SignatureError(f"the credential scope {scope_region}/{scope_service} is not this endpoint's "
                             f"{region}/{service}")
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
    if "x-amz-content-sha256" in lower and ("x-amz-content-sha256" not in signed_list
                                            or lower["x-amz-content-sha256"] != hashlib.sha256(body).hexdigest()):
        raise SignatureError("X-Amz-Content-SHA256 must be signed and be the SHA-256 of the body")
    scope = f"{date}/{region}/{service}/aws4_request"     # region and service: checked above
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(
        canonical_request(method, path, query, headers, signed_list, body).encode()).hexdigest()])
    expected = hmac.new(signing_key(secrets[access], date, region, service), string_to_sign.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("the request signature does not match")
    return access


V2_METHODS = {"HmacSHA256": hashlib.sha256, "HmacSHA1": hashlib.sha1}


def _v2_time(params: dict[str, str], now: datetime) -> None:
    """A Version 2 request's Timestamp (within MAX_SKEW) or Expires (not passed)."""
    stamp, expires = params.get("Timestamp"), params.get("Expires")
    if bool(stamp) == bool(expires):
        raise SignatureError("a Version 2 request needs exactly one of Timestamp and Expires")
    try:
        when = datetime.fromisoformat((stamp or expires).replace("Z", "+00:00"))
    except ValueError:
        raise SignatureError("malformed Timestamp or Expires") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if (stamp and abs(now - when) > MAX_SKEW) or (expires and now > when):
        raise SignatureError("the request time is too far from the server time (or the request expired)")


def verify_v2(method: str, path: str, query: str, host: str, body: bytes, secrets: dict[str, str],
              now: datetime | None = None) -> str:
    """The access key that signed this Version 2 request; SignatureError otherwise."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    try:
        pairs += urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise SignatureError("the request body is not form data") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        raise SignatureError("a parameter is given twice")
    access, signature = params.get("AWSAccessKeyId", ""), params.pop("Signature", "")
    if params.get("SignatureVersion") != "2" or not signature:
        raise SignatureError("SignatureVersion 2 requests need AWSAccessKeyId, SignatureMethod and Signature")
    digest = V2_METHODS.get(params.get("SignatureMethod", ""))
    if digest is None:
        raise SignatureError("SignatureMethod must be HmacSHA256 or HmacSHA1")
    if access not in secrets:
        raise SignatureError(f"unknown access key {access}")
    _v2_time(params, now or datetime.now(timezone.utc))
    q = functools.partial(urllib.parse.quote, safe="-_.~")
    canonical = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(params.items()))
    string_to_sign = f"{method}\n{host.lower()}\n{path or '/'}\n{canonical}"
    expected = base64.b64encode(hmac.new(secrets[access].encode(), string_to_sign.encode(), digest).digest()).decode()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("the request signature does not match")
    return access


def sign(method: str, url: str, access: str, secret: str, region: str, service: str = "s3",
         body: bytes = b"", now: datetime | None = None) -> dict[str, str]:
    """The headers that sign a request with Version 4 (what the API sends to Cumulus)."""
    split = urllib.parse.urlsplit(url)
    when = now or datetime.now(timezone.utc)
    amz_date, date = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    headers = {"host": split.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}
    signed = sorted(headers)
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request(
        method, urllib.parse.unquote(split.path), split.query, headers, signed, body).encode()).hexdigest()])
    signature = hmac.new(signing_key(secret, date, region, service), string_to_sign.encode(), hashlib.sha256).hexdigest()
    return {**headers, "authorization": f"{ALGORITHM} Credential={access}/{scope}, SignedHeaders={';'.join(signed)}, "
                                         f"Signature={signature}"}
