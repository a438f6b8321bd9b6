"""The images a cloud offers (EC2's DescribeImages, RegisterImage, DeregisterImage): raw disks
in its repository, the built-in ones by name and those registered from Cumulus by `ami-` id
(fetched into the repository: pending, then available). A mixin of api.Service."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from g5kdeploy.nimbus import cumulus_client, ec2, propagation
from g5kdeploy.nimbus.ec2 import EC2Error

log = logging.getLogger("nimbus.api")
AMI_NAME = re.compile(r"[A-Za-z0-9()\[\] ./'@_-]{3,128}")      # EC2's rule
FILTERED = {"image-id": "imageId", "name": "name", "state": "imageState", "architecture": "architecture",
            "image-type": "imageType", "is-public": "isPublic", "owner-id": "imageOwnerId",
            "root-device-type": "rootDeviceType", "virtualization-type": "virtualizationType"}   # filter -> field


class ImageActions:
    def images(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(Path(self.cloud.repository).glob("*.img"))}

    def digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._digests:
            self._digests[key] = propagation.sha256_file(path)
        return self._digests[key]

    def _image_ids(self) -> list[str]:
        """Images launchable (in the repository) or on their way there (registered)."""
        registered = {i for i, r in self.store.records("images").items() if r.get("state")}   # not tags only
        return sorted(set(self.images()) | registered)

    def describe_images(self, p: dict) -> dict:
        files, records = self.images(), self.store.records("images")
        known = self._image_ids()
        wanted = ec2.members(p, "ImageId") or known
        if unknown := [i for i in wanted if i not in known]:
            raise EC2Error("InvalidAMIID.NotFound", f"The image id '[{', '.join(unknown)}]' does not exist")
        chosen = ec2.filters(p, set(FILTERED))
        out = []
        for i in wanted:
            r = records.get(i, {})
            state = "available" if i in files else r.get("state", "failed")
            x = {"imageId": i, "imageLocation": r.get("location", f"{self.cloud.site}/{i}"), "imageState": state,
                 "imageOwnerId": "g5kdeploy", "isPublic": True, "architecture": "x86_64", "imageType": "machine",
                 "name": r.get("name", i), "rootDeviceType": "instance-store", "virtualizationType": "hvm",
                 "description": r.get("description") or (f"{files[i].stat().st_size} bytes" if i in files else ""),
                 "stateReason": {"code": "Client.InvalidImage", "message": r["error"]} if r.get("error") else None}
            fields = {f: [str(x[k]).lower() if isinstance(x[k], bool) else str(x[k])] for f, k in FILTERED.items()}
            tags = r.get("tags", {})
            if ec2.selected(fields, tags, chosen):
                out.append({**x, "tagSet": ec2.tag_set(tags)})
        return {"imagesSet": out}

    def register_image(self, p: dict) -> dict:
        """An image whose raw disk is an object of this cloud's Cumulus (ImageLocation
        bucket/key): pending while the repository fetches it, then available."""
        name, location = p.get("Name", ""), p.get("ImageLocation", "")
        if not name:
            raise EC2Error("MissingParameter", "The request must contain the parameter Name")
        if not AMI_NAME.fullmatch(name):
            raise EC2Error("InvalidAMIName.Malformed", f"AMI name {name[:130]!r}: 3-128 letters, digits and "
                                                       "( ) [ ] . / - ' @ _ or spaces")
        bucket, _, key = location.partition("/")
        if not bucket or not key:
            raise EC2Error("InvalidParameterValue", f"ImageLocation {location!r}: give bucket/key of an object "
                                                    "uploaded to this cloud's Cumulus (S3)")
        records = self.store.records("images")
        if name in self.images() or any(r.get("name") == name for r in records.values()):
            raise EC2Error("InvalidAMIName.Duplicate", f"AMI name {name} is already in use")
        try:
            size = cumulus_client.head(self.cloud, bucket, key)
        except cumulus_client.NotFound:
            raise EC2Error("InvalidParameterValue", f"ImageLocation {location!r}: no such object in Cumulus "
                                                    f"(upload it first, e.g. aws s3 cp disk.img s3://{bucket}/{key})"
                           ) from None
        except cumulus_client.Unavailable as e:
            raise EC2Error("Unavailable", f"{e}: retry", 503) from None
        ec2.dry_run(p)
        image = ec2.new_id("ami")
        self.store.put_record("images", image, {"name": name, "location": location, "state": "pending",
                                                "description": p.get("Description", ""), "size": size,
                                                "tags": ec2.tags(p, "image")})
        self.launcher.submit(self._fetch_image, image, bucket, key)
        return {"imageId": image}

    def _fetch_image(self, image: str, bucket: str, key: str) -> None:
        """Cumulus -> repository/<image>.img (whole, then renamed: never half an image)."""
        final = Path(self.cloud.repository) / f"{image}.img"
        part = final.with_suffix(".img.part")
        try:
            cumulus_client.download(self.cloud, bucket, key, part)
            part.replace(final)
            changes = {"state": "available"}
        except Exception as e:
            log.exception("fetching %s/%s", bucket, key)
            part.unlink(missing_ok=True)
            changes = {"state": "failed", "error": f"fetching {bucket}/{key} from Cumulus: {e}"}
        if record := self.store.record("images", image):
            self.store.put_record("images", image, {**record, **changes})
        else:                                   # deregistered meanwhile
            final.unlink(missing_ok=True)

    def deregister_image(self, p: dict) -> dict:
        image = p.get("ImageId", "")
        if image not in self._image_ids():
            raise EC2Error("InvalidAMIID.NotFound", f"The image id '[{image}]' does not exist")
        ec2.dry_run(p)
        self.store.delete_record("images", image)
        (Path(self.cloud.repository) / f"{image}.img").unlink(missing_ok=True)
        return {"return": True}

    ACTIONS = {"DescribeImages": describe_images, "RegisterImage": register_image,
               "DeregisterImage": deregister_image}
