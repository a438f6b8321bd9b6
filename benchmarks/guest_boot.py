"""Boot to ready of 1 and 8 guests, Debian beside busybox (tiny), interleaved, median of 3:
RunInstances -> running (booted and contextualized), and for Debian -> ssh answers with the
key pair. One cloud on rennes (service + 2 VMMs of 512 MiB), qcow propagation with warm
caches; TCG here (KVM on Grid'5000)."""
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import common
from experiments import deploy_nimbus
from g5kdeploy import engine, remote
from g5kdeploy.nimbus import deploy

REPEATS, COUNTS, IMAGES = 3, (1, 8), ("tiny", "debian")


def ssh_ready(address: str, key: Path, deadline: float) -> float:
    """When `ssh -i key root@address true` first succeeds (monotonic s)."""
    while time.monotonic() < deadline:
        r = subprocess.run(remote.login(key, address, "true"), capture_output=True)
        if r.returncode == 0:
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"no ssh into {address}")


def boot(ec2, image: str, n: int, key: Path) -> tuple[float, float | None]:
    """Seconds from RunInstances to all running, and to ssh into all (Debian)."""
    t0 = time.monotonic()
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=n, MaxCount=n, InstanceType="m1.small",
                                                      KeyName="bench")["Instances"]]
    try:
        while True:
            guests = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]
            states = {i["State"]["Name"] for i in guests}
            if states == {"running"}:
                break
            if states - {"pending", "running"}:
                raise RuntimeError(f"{image}: {[i.get('StateReason') for i in guests]}")
            time.sleep(0.2)
        running = time.monotonic() - t0
        if image == "tiny":                           # busybox: no sshd
            return running, None
        deadline = time.monotonic() + 300
        return running, max(ssh_ready(i["PrivateIpAddress"], key, deadline) for i in guests) - t0
    finally:
        ec2.terminate_instances(InstanceIds=ids)


def main() -> None:
    tb = common.testbed()
    deploy.teardown(deploy.CLOUDS, tb)
    engine.execute(deploy_nimbus.EXPERIMENT, tb, {"sites": ["rennes"], "vmms_per_site": 2})
    cloud = deploy.client(json.loads(deploy.CLOUDS.read_text())["rennes"])
    key = Path(tempfile.mkdtemp(prefix="g5kdeploy-bench-")) / "bench.pem"
    key.write_text(cloud.create_key_pair(KeyName="bench")["KeyMaterial"])
    key.chmod(0o600)
    try:
        for image in IMAGES:                          # warm the VMMs' caches
            boot(cloud, image, 2, key)
        times = {(image, n): [] for image in IMAGES for n in COUNTS}
        for _ in range(REPEATS):
            for image in IMAGES:
                for n in COUNTS:
                    times[(image, n)].append(boot(cloud, image, n, key))
    finally:
        deploy.teardown(deploy.CLOUDS, tb)
    for n in COUNTS:
        tiny = statistics.median(t[0] for t in times[("tiny", n)])
        deb = statistics.median(t[0] for t in times[("debian", n)])
        ssh = statistics.median(t[1] for t in times[("debian", n)])
        print(f"{n} guest(s): tiny running {tiny:5.1f} s | debian running {deb:5.1f} s, ssh {ssh:5.1f} s | "
              f"debian/tiny = {deb / tiny:.1f} (medians of {REPEATS}; runs debian ssh "
              f"{', '.join(f'{t[1]:.1f}' for t in times[('debian', n)])})")


if __name__ == "__main__":
    main()
