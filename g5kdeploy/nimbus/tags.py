"""Tags on instances, images and key pairs (EC2's CreateTags, DeleteTags, DescribeTags).
Instances keep theirs in their record; images and key pairs in their own. A mixin of
api.Service."""
from __future__ import annotations

from g5kdeploy.nimbus import ec2
from g5kdeploy.nimbus.ec2 import EC2Error

TAG_FILTERS = {"key", "value", "resource-id", "resource-type"}


class TagActions:
    def _tags_of(self, resource: str) -> dict[str, str]:
        if resource.startswith("i-"):
            return (self.store.get(resource) or {}).get("tags", {})
        if resource.startswith("key-"):
            return next((k["tags"] for k in self.store.records("keys").values() if k["id"] == resource), {})
        return (self.store.record("images", resource) or {}).get("tags", {})

    def _retag(self, p: dict, change) -> dict:
        """`change(tags) -> tags` on every resource of ResourceId.N (instances, images, key pairs)."""
        resources = ec2.members(p, "ResourceId")
        if not resources:
            raise EC2Error("MissingParameter", "The request must contain the parameter ResourceId")
        images, keys = set(self._image_ids()), self.store.records("keys")
        instances = [r for r in resources if r.startswith("i-")]
        if instances:
            self._selected({f"InstanceId.{n}": r for n, r in enumerate(instances, 1)})   # each must exist
        by_id = {k["id"]: n for n, k in keys.items()}
        if unknown := [r for r in resources if not r.startswith("i-") and r not in images and r not in by_id]:
            raise EC2Error("InvalidID", f"The ID '{unknown[0]}' is not valid")
        ec2.dry_run(p)
        with self.lock:
            for r in resources:
                if r.startswith("i-"):
                    self.store.update(r, tags=change(self._tags_of(r)))
                elif r in by_id:
                    key = keys[by_id[r]]
                    self.store.put_record("keys", key["name"], {**key, "tags": change(key["tags"])})
                else:
                    image = self.store.record("images", r) or {}
                    self.store.put_record("images", r, {**image, "tags": change(image.get("tags", {}))})
        return {"return": True}

    def create_tags(self, p: dict) -> dict:
        new = ec2.tag_list(p)
        if not new:
            raise EC2Error("MissingParameter", "The request must contain the parameter Tag")
        return self._retag(p, lambda tags: {**tags, **new})

    def delete_tags(self, p: dict) -> dict:
        gone = ec2.tag_list(p)                 # a key given without a value: whatever its value
        valued = {p[f"Tag.{n}.Key"] for n in range(1, len(gone) + 1) if f"Tag.{n}.Value" in p}
        return self._retag(p, lambda tags: {k: v for k, v in tags.items()
                                            if not (k in gone and (k not in valued or gone[k] == v))})

    def describe_tags(self, p: dict) -> dict:
        chosen = ec2.filters(p, TAG_FILTERS)
        every = [(i["id"], "instance", i.get("tags", {})) for i in self._selected({})]
        every += [(image, "image", self._tags_of(image)) for image in self._image_ids()]
        every += [(k["id"], "key-pair", k["tags"]) for k in self.store.records("keys").values()]
        out = [{"resourceId": r, "resourceType": kind, "key": k, "value": v}
               for r, kind, tags in every for k, v in sorted(tags.items())
               if ec2.selected({"key": [k], "value": [v], "resource-id": [r], "resource-type": [kind]}, {}, chosen)]
        page, more = ec2.page(out, p)
        return {"tagSet": page, "nextToken": more}

    ACTIONS = {"CreateTags": create_tags, "DeleteTags": delete_tags, "DescribeTags": describe_tags}
