"""The context broker (thesis §3.3, Nimbus' context broker), on the service node:
`python3 -m g5kdeploy.nimbus.broker [/etc/nimbus/cloud.json]`. The guests of one request form
a context; each guest agent joins, waits until all have joined, learns every peer's name,
address and role, fetches its user data and its key pair's public key, and reports ready, which makes it `running`."""
from __future__ import annotations

import logging
import time
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs

from g5kdeploy.nimbus import web
from g5kdeploy.nimbus.store import Store

log = logging.getLogger("nimbus.broker")


def answer(store: Store, ctx: str, verb: str, q: dict[str, str]) -> tuple[int, str]:
    context = store.context(ctx)
    instance = store.get(q.get("id", ""))
    if context is None or instance is None or instance["id"] not in context["instances"]:
        return 404, "unknown context or instance\n"
    if verb == "join":
        store.join(ctx, instance["id"])
        return 200, f"role {instance['role']} name {instance['name']}\n"
    if verb == "peers":
        members = [store.get(i) for i in context["instances"]]
        joined = store.join(ctx, instance["id"])
        if joined < len(members):
            return 200, f"waiting {joined}/{len(members)}\n"
        return 200, "complete\n" + "".join(f"peer {m['id']} {m['ip']} {m['name']} {m['role']}\n" for m in members)
    if verb == "userdata":
        return 200, context["user_data"]
    if verb == "key":                      # the key pair's public key: root's authorized_keys
        return 200, context.get("public_key", "")
    if verb == "ready":
        i = store.get(instance["id"])
        if i["state"] == "pending":
            store.update(i["id"], state="running", contextualized_at=time.time(),
                         peers_reachable=int(q.get("peers", 0)), peers_unreachable=int(q.get("unreachable", 0)))
        return 200, "ok\n"
    return 404, "unknown verb\n"


def serve(store: Store, port: int) -> ThreadingHTTPServer:
    def reply(method, path, query, headers, body):
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "ctx":
            return 404, "text/plain", b"not found\n"
        status, text = answer(store, parts[1], parts[2], {k: v[0] for k, v in parse_qs(query).items()})
        return status, "text/plain", text.encode()
    return web.serve(reply, port, log)


if __name__ == "__main__":
    web.main(lambda cloud: serve(Store.of(cloud), int(cloud.broker.rsplit(":", 1)[1])))
