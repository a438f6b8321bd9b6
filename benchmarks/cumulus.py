"""Cumulus read bandwidth: a 200 MB object read whole by 1 and by 2 VMM nodes at once (curl
on presigned URLs, over the site's 1 Gbit/s LAN), beside the service node reading the same
object's file from its disk (O_DIRECT); median of 3. Thesis Fig 4.5: 83 MB/s for one reader,
76 MB/s each for two."""
import json
import random
import statistics
import tempfile
from pathlib import Path

from benchmarks import common
from experiments import deploy_nimbus
from g5kdeploy import engine, remote
from g5kdeploy.nimbus import deploy
from g5kdeploy.nimbus.cumulus import DEVICES

SIZE, REPEATS = 200 << 20, 3


def rates(hosts, url: str) -> list[float]:
    """MB/s of each host reading the URL at the same time."""
    r = remote.run(f"curl -sS -o /dev/null -w '%{{size_download}} %{{time_total}}' '{url}'", hosts)
    assert not r.failed, r.summary()
    return [float(size) / float(t) / 1e6 for size, t in (x.stdout.split() for x in r)]


def main() -> None:
    tb = common.testbed()
    deploy.teardown(deploy.CLOUDS, tb)
    engine.execute(deploy_nimbus.EXPERIMENT, tb, {"sites": ["rennes"], "vmms_per_site": 2, "guests": []})
    cloud = json.loads(deploy.CLOUDS.read_text())["rennes"]
    s3 = deploy.s3_client(cloud)
    try:
        s3.create_bucket(Bucket="bench")
        blob = Path(tempfile.mkdtemp(prefix="g5kdeploy-bench-")) / "blob"
        blob.write_bytes(random.Random(0).randbytes(SIZE))
        with open(blob, "rb") as f:                  # one object (a multipart one is stored as segments)
            s3.put_object(Bucket="bench", Key="blob", Body=f)
        blob.unlink()
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "bench", "Key": "blob"}, ExpiresIn=3600)
        vmms = tb.nodes(",".join(cloud["vmms"]))
        service = tb.nodes(cloud["service"])
        disk = f"find {DEVICES} -name '*.data' -size +100M | head -1 | xargs -I{{}} dd if={{}} of=/dev/null bs=4M " \
               "iflag=direct 2>&1 | tail -1"
        one, two, raw = [], [], []
        for _ in range(REPEATS):
            one += rates(vmms[:1], url)
            two += rates(vmms[:2], url)
            out = remote.run(disk, service)[0].stdout.split()
            raw.append(float(out[-2]) * (1000 if out[-1].startswith("G") else 1))
    finally:
        deploy.teardown(deploy.CLOUDS, tb)
    print(f"1 reader : {statistics.median(one):6.1f} MB/s (thesis 83)   runs {', '.join(f'{x:.0f}' for x in one)}")
    print(f"2 readers: {statistics.median(two):6.1f} MB/s each (thesis 76)   runs {', '.join(f'{x:.0f}' for x in two)}")
    print(f"disk     : {statistics.median(raw):6.1f} MB/s (the object's file, O_DIRECT, on the service node)")
    print(f"2 readers / 1 reader = {statistics.median(two) / statistics.median(one):.2f} each (thesis 0.92)")


if __name__ == "__main__":
    main()
