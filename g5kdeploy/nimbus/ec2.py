"""The EC2 Query API wire format: parameters in, XML responses and errors out; EC2's
filters (`Filter.N.Name`/`Filter.N.Value.M`) and pagination (`MaxResults`/`NextToken`)."""
from __future__ import annotations

import base64
import re
import secrets
import urllib.parse
import uuid
from xml.sax.saxutils import escape

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


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


def new_id(prefix: str) -> str:
    """A new EC2 id: i-, r-, ami-, key- and 17 hex digits."""
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def dry_run(params: dict[str, str]) -> None:
    """A DryRun request stops here, once it has been checked, as EC2's does."""
    if params.get("DryRun") == "true":
        raise EC2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)


INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")     # EC2's two lengths


def well_formed(instance: str) -> bool:
    """Is this an instance id (checked before it names anything on a VMM)?"""
    return bool(INSTANCE_ID.fullmatch(instance))


def members(params: dict[str, str], prefix: str) -> list[str]:
    """Values of `Prefix.1`, `Prefix.2`, ... in order."""
    keys = [k for k in params if k.startswith(prefix + ".") and k[len(prefix) + 1:].isdigit()]
    return [params[k] for k in sorted(keys, key=lambda k: int(k[len(prefix) + 1:]))]


def tags(params: dict[str, str], resource: str = "instance") -> dict[str, str]:
    """The tags a request's TagSpecification.N (of this ResourceType) gives."""
    out = {}
    for n in range(1, 51):
        spec = f"TagSpecification.{n}."
        if not any(k.startswith(spec) for k in params):
            break
        if params.get(spec + "ResourceType", resource) == resource:
            out.update(tag_list(params, spec + "Tag"))
    return out


def tag_list(params: dict[str, str], prefix: str = "Tag") -> dict[str, str]:
    """Prefix.N.Key / Prefix.N.Value (a missing value is empty, as EC2 takes it)."""
    out = {}
    for n in range(1, 51):
        key = params.get(f"{prefix}.{n}.Key")
        if key is None:
            break
        if not key or len(key) > 128 or key.startswith("aws:"):
            raise EC2Error("InvalidParameterValue", f"Tag key {key!r} must be 1-128 characters, not aws:")
        out[key] = params.get(f"{prefix}.{n}.Value", "")
    return out


def filters(params: dict[str, str], known: set[str]) -> list[tuple[str, list[str]]]:
    """(name, values) of Filter.N; a name not in `known` (nor tag:K / tag-key / tag-value)
    is refused as EC2 refuses it."""
    out = []
    for n in range(1, 201):
        name = params.get(f"Filter.{n}.Name")
        if name is None:
            break
        if name not in known and not name.startswith("tag:") and name not in ("tag-key", "tag-value"):
            raise EC2Error("InvalidParameterValue", f"The filter '{name}' is invalid")
        out.append((name, members(params, f"Filter.{n}.Value")))
    return out


def like(value: str, pattern: str) -> bool:
    """EC2's filter values: * any characters, ? one character, a backslash escapes them."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.fullmatch("".join(out), value, re.S) is not None


def selected(fields: dict[str, list[str]], resource_tags: dict[str, str],
             chosen: list[tuple[str, list[str]]]) -> bool:
    """Does a resource pass every filter (each filter: any of its values)? `fields`: the
    resource's values of each filter name."""
    for name, values in chosen:
        if name.startswith("tag:"):
            have = [resource_tags[name[4:]]] if name[4:] in resource_tags else []
        elif name == "tag-key":
            have = list(resource_tags)
        elif name == "tag-value":
            have = list(resource_tags.values())
        else:
            have = fields.get(name, [])
        if not any(like(h, v) for h in have for v in values):
            return False
    return True


def page(items: list, params: dict[str, str], lowest: int = 5, highest: int = 1000) -> tuple[list, str | None]:
    """The page of `items` that MaxResults and NextToken ask for, and the next token."""
    token = params.get("NextToken")
    try:
        start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:")) if token else 0
    except ValueError:
        start = -1
    if start < 0:
        raise EC2Error("InvalidNextToken", "The specified NextToken is not valid")
    if "MaxResults" not in params:
        return items[start:], None
    try:
        size = int(params["MaxResults"])
    except ValueError:
        raise EC2Error("InvalidParameterValue", "MaxResults must be an integer") from None
    if not lowest <= size <= highest:
        raise EC2Error("InvalidParameterValue", f"Value ({size}) for parameter maxResults is invalid: "
                       f"expecting a value between {lowest} and {highest}")
    end = start + size
    more = base64.urlsafe_b64encode(f"offset:{end}".encode()).decode() if end < len(items) else None
    return items[start:end], more


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


def tag_set(tags: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": v} for k, v in sorted(tags.items())]


def instance_xml(i: dict) -> dict:
    state = i["state"]
    return {"instanceId": i["id"], "imageId": i["image"],
            "instanceState": {"code": STATE_CODES[state], "name": state},
            "privateDnsName": i.get("name", ""), "dnsName": i.get("name", ""),
            "reason": i.get("reason", ""), "amiLaunchIndex": i.get("launch_index", 0),
            "instanceType": i["type"], "launchTime": i["launch_time"],
            "placement": {"availabilityZone": i["zone"], "hostId": i.get("vmm")},
            "privateIpAddress": i.get("ip"), "ipAddress": i.get("ip"),
            "keyName": i.get("key_name"), "architecture": "x86_64", "rootDeviceType": "instance-store",
            "virtualizationType": "hvm",
            "stateReason": {"code": "Server.Error", "message": i["error"]} if i.get("error") else None,
            "tagSet": tag_set(i.get("tags", {}))}
