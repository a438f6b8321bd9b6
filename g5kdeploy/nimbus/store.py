"""The cloud's state in the site's Redis: instances and contexts, shared by the API and the
context broker (both may restart without losing anything). On the service node,
`python3 -m g5kdeploy.nimbus.store [cloud.json] [instance ...]` prints instances as JSON
(with their timelines: what experiments read)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import redis

P = "nimbus:"


TIMEOUT_S = 5          # a Redis that does not answer by then is an error, not a hang


class Store:
    def __init__(self, address: str, password: str | None = None, timeout_s: float = TIMEOUT_S):
        host, port = address.rsplit(":", 1)
        self.r = redis.Redis(host=host, port=int(port), password=password, decode_responses=True,
                             socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    @classmethod
    def of(cls, cloud) -> "Store":
        """The store of a cloud (its Config)."""
        return cls(cloud.redis, cloud.redis_password)

    # instances ------------------------------------------------------------------------
    def put(self, *instances: dict) -> None:
        pipe = self.r.pipeline()
        for i in instances:
            pipe.set(P + "i:" + i["id"], json.dumps(i))
            pipe.sadd(P + "instances", i["id"])
        pipe.execute()

    def get(self, instance: str) -> dict | None:
        raw = self.r.get(P + "i:" + instance)
        return json.loads(raw) if raw else None

    def update(self, instance: str, **changes) -> dict | None:
        """Change fields of an instance atomically (optimistic, WATCH-based)."""
        key = P + "i:" + instance
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    i = {**json.loads(raw), **changes}
                    pipe.multi()
                    pipe.set(key, json.dumps(i))
                    pipe.execute()
                    return i
                except redis.WatchError:
                    continue

    def instances(self) -> list[dict]:
        ids = sorted(self.r.smembers(P + "instances"))
        if not ids:
            return []
        return [json.loads(v) for v in self.r.mget([P + "i:" + i for i in ids]) if v]

    # records: key pairs ("keys") and images ("images"), by name -------------------------
    def records(self, kind: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.r.hgetall(P + kind).items()}

    def record(self, kind: str, name: str) -> dict | None:
        raw = self.r.hget(P + kind, name)
        return json.loads(raw) if raw else None

    def put_record(self, kind: str, name: str, value: dict, new: bool = False) -> bool:
        """Store a record; with `new`, only if there is none of that name (False then)."""
        if new:
            return bool(self.r.hsetnx(P + kind, name, json.dumps(value)))
        self.r.hset(P + kind, name, json.dumps(value))
        return True

    def delete_record(self, kind: str, name: str) -> bool:
        return bool(self.r.hdel(P + kind, name))

    # contexts ---------------------------------------------------------------------------
    def new_context(self, ctx: str, instances: list[str], user_data: str, public_key: str = "") -> None:
        """A request's context: its instances, user data and the public key of its key pair."""
        self.r.set(P + "ctx:" + ctx, json.dumps({"instances": instances, "user_data": user_data,
                                                 "public_key": public_key}))

    def context(self, ctx: str) -> dict | None:
        raw = self.r.get(P + "ctx:" + ctx)
        return json.loads(raw) if raw else None

    def join(self, ctx: str, instance: str) -> int:
        self.r.sadd(P + f"ctx:{ctx}:joined", instance)
        return self.r.scard(P + f"ctx:{ctx}:joined")


def main() -> None:
    from g5kdeploy.nimbus.config import CONFIG, Cloud
    args = sys.argv[1:]
    config = Path(args.pop(0)) if args and args[0].endswith(".json") else CONFIG
    store = Store.of(Cloud.load(config))
    wanted = set(args)
    json.dump([i for i in store.instances() if not wanted or i["id"] in wanted], sys.stdout)


if __name__ == "__main__":
    main()
