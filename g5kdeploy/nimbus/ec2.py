"""The EC2 Query API wire format: parameters in, XML responses and errors out."""
from __future__ import annotations

import re
import urllib.parse
import uuid
from xml.sax.saxutils import escape

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}


class EC2Error(Exception):
    """An error boto3 raises as ClientError: EC2 code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def parse_params(body: bytes, query: str = "") -> dict[str, str]:
    """The request's parameters (query string, then the form body); a body that is not
    UTF-8 is the client's error."""
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    try:
        params.update(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise EC2Error("InvalidParameterValue", "the request body is not UTF-8 form data") from None
    return params


INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")     # EC2's two lengths


def well_formed(instance: str) -> bool:
    """Is this an instance id (checked before it names anything on a VMM)?"""
    return bool(INSTANCE_ID.fullmatch(instance))


def members(params: dict[str, str], prefix: str) -> list[str]:
    """Values of `Prefix.1`, `Prefix.2`, ... in order."""
    keys = [k for k in params if k.startswith(prefix + ".") and k[len(prefix) + 1:].isdigit()]
    return [params[k] for k in sorted(keys, key=lambda k: int(k[len(prefix) + 1:]))]


def tags(params: dict[str, str]) -> dict[str, str]:
    """Instance tags of RunInstances' TagSpecification.N.Tag.M.Key/Value."""
    out = {}
    for k, v in params.items():
        if k.startswith("TagSpecification.") and k.endswith(".Key"):
            out[v] = params.get(k[:-4] + ".Value", "")
    return out


def xml(value, tag: str | None = None) -> str:
    """dict -> elements, list -> <item>s, scalars escaped; None is left out."""
    if isinstance(value, dict):
        inner = "".join(xml(v, k) for k, v in value.items() if v is not None)
    elif isinstance(value, list):
        inner = "".join(xml(v, "item") for v in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    else:
        inner = escape(str(value))
    return f"<{tag}>{inner}</{tag}>" if tag else inner


def response(action: str, body: dict) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NAMESPACE}">'
            f"<requestId>{uuid.uuid4()}</requestId>{xml(body)}</{action}Response>").encode()


def error(err: EC2Error) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(err.code)}</Code>'
            f"<Message>{escape(err.message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID>"
            "</Response>").encode()


def instance_xml(i: dict) -> dict:
    state = i["state"]
    return {"instanceId": i["id"], "imageId": i["image"],
            "instanceState": {"code": STATE_CODES[state], "name": state},
            "privateDnsName": i.get("name", ""), "dnsName": i.get("name", ""),
            "reason": i.get("reason", ""), "amiLaunchIndex": i.get("launch_index", 0),
            "instanceType": i["type"], "launchTime": i["launch_time"],
            "placement": {"availabilityZone": i["zone"]},
            "privateIpAddress": i.get("ip"), "ipAddress": i.get("ip"),
            "stateReason": {"code": "Server.Error", "message": i["error"]} if i.get("error") else None,
            "tagSet": [{"key": k, "value": v} for k, v in sorted(i.get("tags", {}).items())]}
