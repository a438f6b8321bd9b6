"""Nimbus-style clouds on the local testbed: cookbooks converged by itamae on nodes, boto3
driving real QEMU guests through each propagation mode, contextualization checked from
inside the guests, bad requests, and the deploy-nimbus task."""
import json
import subprocess
import time
import urllib.error
import urllib.request

import botocore.exceptions
import pandas as pd
import pytest

from conftest import drawn, invoke, own_testbed
from experiments import deploy_nimbus
from g5kdeploy import REDIS_CLI, REDIS_PASSWORD, chef, engine, remote
from g5kdeploy.nimbus import deploy
from g5kdeploy.vm import image as vm_image

pytestmark = pytest.mark.testbed
USER_DATA = "#!/bin/sh\necho \"hello from $(hostname)\" > /www/hello\n"


@pytest.fixture(scope="module")
def clouds(small_description):
    """rennes: service + 2 VMMs, nancy: service + 1 VMM (the small testbed's 5 nodes)."""
    with own_testbed(small_description) as tb:
        run = engine.execute(deploy_nimbus.EXPERIMENT, tb, {"vmms_per_site": {"rennes": 2, "nancy": 1}})
        yield tb, run, json.loads(deploy.CLOUDS.read_text())
        assert deploy.teardown(deploy.CLOUDS, tb) == []


def guests(ec2, ids):
    return [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]


def wait_state(ec2, ids, timeout=150):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {i["State"]["Name"] for i in guests(ec2, ids)}
        if states == {"running"} or "terminated" in states:
            break
        time.sleep(0.5)
    return guests(ec2, ids)


def fetch(address, path, timeout=20):
    """A file the guest serves; waits for it to appear (the user data runs in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(f"http://{address}/{path}", timeout=10).read().decode()
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def vmm_leftovers(vmms, ids) -> str:
    """What is left of these guests on the VMMs: processes, run dirs, RAM files, taps."""
    pattern = "|".join(ids)
    r = remote.run(f"ps -eo args | grep -E '{pattern}' | grep -v grep; ls /var/lib/g5kdeploy/vms /dev/shm "
                   f"/var/lib/nimbus/incoming; ip -br link | grep -E '^t' || true", vmms)
    return "".join(x.stdout for x in r)


def test_deployment_timeline(clouds, tmp_path):
    tb, run, info = clouds
    rows = pd.read_parquet(run.dir / "rows.parquet")
    assert (rows["outcome"] == "ok").all()
    timeline, = drawn(deploy_nimbus.EXPERIMENT, run.dir, tmp_path)["deploy-nimbus.png"]
    assert timeline["bars"] == len(rows)                                # one bar per node and stage
    assert timeline["legend"] == ["reserve", "deploy", "image", "ship", "configure", "upload", "verify"]
    stages = rows.groupby("node")["stage"].apply(set).to_dict()
    assert stages.pop("frontend") == {"image"}
    node_stages = {"reserve", "deploy", "ship", "configure"}
    assert stages == {**{n: node_stages for n in rows[rows.role == "vmm"]["node"]},
                      **{n: node_stages | {"upload", "verify"} for n in rows[rows.role == "service"]["node"]}}
    assert (rows["end"] >= rows["start"]).all()
    events = pd.read_json(run.dir / "events.jsonl", lines=True)
    assert len(events[(events.stage == "configure") & events.node.notna()]) == 2 * 5   # start + end, 5 nodes
    assert (rows.loc[rows.stage == "configure", "changed"] > 0).all()
    assert set(info) == {"rennes", "nancy"} and len(info["rennes"]["vmms"]) == 2
    for cloud in info.values():
        assert deploy.verify(cloud) == ["debian", "tiny"]


def test_the_clouds_state_survives_a_redis_restart(clouds):
    tb, run, info = clouds
    for cloud in info.values():
        cli = REDIS_CLI
        r = remote.run(f"{cli} set nimbus:restart-probe kept > /dev/null; {cli} shutdown nosave; "
                       "redis-server /etc/redis/g5kdeploy.conf; "
                       f"for i in $(seq 50); do {cli} ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done; "
                       f"{cli} get nimbus:restart-probe; {cli} del nimbus:restart-probe > /dev/null",
                       [cloud["service"]])[0]
        assert r.ok and r.stdout.split() == ["kept"], (r.stdout, r.stderr)     # appendonly: the write was kept
        assert deploy.verify(cloud) == ["debian", "tiny"]


def test_the_clouds_redis_takes_only_local_clients_with_its_password(clouds):
    tb, run, info = clouds
    for cloud in info.values():
        service = tb.node(cloud["service"])

        def on(host, command):
            return remote.run(command, [host])[0].stdout.strip()
        assert "Connection refused" in on(service, f"redis-cli -h {service.address} ping 2>&1")   # bound to lo only
        assert "Connection refused" in on(cloud["vmms"][0], f"redis-cli -h {service.address} ping 2>&1")
        assert on(service, "redis-cli ping 2>&1").startswith("NOAUTH")          # a password...
        assert on(service, f"{REDIS_CLI} ping") == "PONG"                       # ...root knows
        assert on(service, f"stat -c %a /etc/redis/g5kdeploy.conf {REDIS_PASSWORD}").split() == ["600", "600"]


def test_each_node_holds_only_its_own_secrets(clouds):
    tb, run, info = clouds
    for site, cloud in info.items():
        for host in [cloud["service"], *cloud["vmms"]]:
            def on(command):
                return remote.run(command, [host])[0].stdout.split()
            assert on(f"stat -c %a {chef.BUNDLE}; ls {chef.BUNDLE}/nodes") == ["700", f"{host}.json"]
            assert on("ls /root/.ssh/nimbus_id 2>/dev/null") == (["/root/.ssh/nimbus_id"] if host == cloud["service"]
                                                                  else [])    # the cloud's key: its service only
            assert on("ls /root /tmp | grep '[.]tar$'; true") == []           # the archives did not stay
    for node in tb.nodes(",".join(h for c in info.values() for h in [c["service"], *c["vmms"]])):
        site = node.site
        others = [c["secret_key"] for s, c in info.items() if s != site]
        written = tb.files.node_dir(node) / "upper"                          # all the node ever wrote
        found = subprocess.run(["grep", "-rlF", "-D", "skip", *(x for o in others for x in ("-e", o)), str(written)],
                               capture_output=True, text=True)
        assert found.returncode == 1 and found.stdout == "", found.stdout   # no other cloud's secret


def test_second_converge_changes_nothing(clouds):
    tb, run, info = clouds
    res_nodes = tb.nodes(",".join([c["service"] for c in info.values()] + sum((c["vmms"] for c in info.values()), [])))
    plans = deploy.plan(res_nodes, tb.description)
    for p in plans:                     # the same credentials as the running clouds
        p.access_key, p.secret_key = info[p.site]["access_key"], info[p.site]["secret_key"]
    guest = vm_image.build(size_mb=deploy_nimbus.Params().image_size_mb)
    again = deploy.configure(plans, guest, deploy.CLOUDS.parent)
    assert all(c.ok for c in again), [c.error for c in again]
    assert {c.host: c.changed for c in again} == {c.host: 0 for c in again}, \
        [line for c in again if c.changed for line in c.log.splitlines() if "will change from" in line]


@pytest.mark.parametrize("mode", ["scp", "chain", "qcow", "chain+qcow"])
def test_two_guests_boot_and_are_contextualized(clouds, mode):
    tb, run, info = clouds
    ec2 = deploy.client(info["rennes"])
    r = ec2.run_instances(ImageId="tiny", MinCount=2, MaxCount=2, InstanceType="m1.small",
                          UserData=USER_DATA,              # boto3 base64-encodes it
                          TagSpecifications=[{"ResourceType": "instance",
                                              "Tags": [{"Key": "propagation", "Value": mode}]}])
    ids = [i["InstanceId"] for i in r["Instances"]]
    try:
        running = wait_state(ec2, ids)
        assert [i["State"]["Name"] for i in running] == ["running", "running"], [i.get("StateReason") for i in running]
        addresses = {i["InstanceId"]: i["PrivateIpAddress"] for i in running}
        names = {i["InstanceId"]: i["PrivateDnsName"] for i in running}
        for me, address in addresses.items():
            ctx = fetch(address, "ctx").splitlines()       # written by the guest's own agent
            assert ctx[0].startswith(f"self {me} ")
            peers = {line.split()[1]: line.split() for line in ctx[1:]}
            assert set(peers) == set(ids)
            for other, fields in peers.items():
                assert fields[2:4] == [addresses[other], names[other]] and fields[-1] == "reachable"
            assert f"{addresses[other]} {names[other]}" in fetch(address, "hosts")
            assert fetch(address, "hello").strip() == f"hello from {names[me]}"
    finally:
        ec2.terminate_instances(InstanceIds=ids)
    assert {i["State"]["Name"] for i in guests(ec2, ids)} == {"terminated"}
    assert not any(id_ in vmm_leftovers(info["rennes"]["vmms"], ids) for id_ in ids)
    assert "qemu" not in vmm_leftovers(info["rennes"]["vmms"], ["qemu-system"])


def test_bad_requests_leave_no_instance(clouds):
    tb, run, info = clouds
    ec2 = deploy.client(info["nancy"])
    before = guests(ec2, [])

    def code(**kwargs):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ec2.run_instances(**kwargs)
        return e.value.response["Error"]["Code"]

    assert code(ImageId="nope", MinCount=1, MaxCount=1) == "InvalidAMIID.NotFound"
    assert code(ImageId="tiny", MinCount=5, MaxCount=5) == "InsufficientInstanceCapacity"   # 512 MiB VMM
    bad = deploy.client({**info["nancy"], "secret_key": "wrong"})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bad.describe_images()
    assert e.value.response["Error"]["Code"] == "AuthFailure"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_vpcs()
    assert e.value.response["Error"]["Code"] == "InvalidAction"
    assert guests(ec2, []) == before
    assert "qemu" not in vmm_leftovers(info["nancy"]["vmms"], ["qemu-system"])


def test_deploy_nimbus_bad_input_leaves_no_job(clouds):
    tb, run, info = clouds
    jobs = set(tb.scheduler.jobs())
    r = invoke("deploy-nimbus", "--sites", "lyon")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "lyon" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = invoke("deploy-nimbus", "--propagation", "ftp")
    assert r.returncode == 2 and "propagation" in r.stderr
    assert set(tb.scheduler.jobs()) == jobs


def test_readme_boto3_snippet_works_verbatim(clouds):
    import re
    import subprocess
    import sys
    from conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"this works verbatim:\n\n```python\n(.*?)```", readme, re.S)[1]
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "['debian', 'tiny']" in r.stdout and r.stdout.count(" reachable") == 4


def ssh_into(address: str, key, command: str, timeout: float = 0) -> subprocess.CompletedProcess:
    """`ssh -i key root@address command` from the frontend, as a user types it; retried for
    up to `timeout` s while the guest's sshd is not up."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(remote.login(key, address, command), capture_output=True, text=True, timeout=60)
        if r.returncode != 255 or time.monotonic() > deadline:
            return r
        time.sleep(1)


def test_a_debian_instance_takes_its_key_pair_and_keeps_its_ram_and_disk(clouds, tmp_path):
    tb, run, info = clouds
    ec2 = deploy.client(info["nancy"])
    key = tmp_path / "mine.pem"
    key.write_text(ec2.create_key_pair(KeyName="mine")["KeyMaterial"])
    key.chmod(0o600)
    [i] = [x["InstanceId"] for x in ec2.run_instances(ImageId="debian", MinCount=1, MaxCount=1, KeyName="mine",
                                                       InstanceType="m1.small")["Instances"]]
    try:
        [guest] = wait_state(ec2, [i], timeout=240)
        assert guest["State"]["Name"] == "running", guest.get("StateReason")
        address = guest["PrivateIpAddress"]
        r = ssh_into(address, key, "cat /etc/debian_version", timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("12."), r.stderr
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        assert ssh_into(address, other, "true").returncode == 255         # only the key pair gets in
        # stop/start: the guest's RAM is kept (a process lives on)
        pid = ssh_into(address, key, "sleep 100000 > /dev/null 2>&1 & echo $!").stdout.strip()
        assert ec2.stop_instances(InstanceIds=[i])["StoppingInstances"][0]["CurrentState"]["Name"] == "stopped"
        assert ssh_into(address, key, "true").returncode == 255           # paused: nobody answers
        ec2.start_instances(InstanceIds=[i])
        assert wait_state(ec2, [i])[0]["State"]["Name"] == "running"
        assert ssh_into(address, key, f"kill -0 {pid} && echo alive", timeout=30).stdout.strip() == "alive"
        # reboot: a new boot on the same disk
        boot = ssh_into(address, key, "echo kept > /root/marker && sync && cat /proc/sys/kernel/random/boot_id").stdout
        ec2.reboot_instances(InstanceIds=[i])
        deadline = time.monotonic() + 120
        while (now := ssh_into(address, key, "cat /proc/sys/kernel/random/boot_id", timeout=5).stdout) in ("", boot) \
                and time.monotonic() < deadline:
            time.sleep(1)
        assert now and now != boot
        assert ssh_into(address, key, "cat /root/marker").stdout.strip() == "kept"
    finally:
        ec2.terminate_instances(InstanceIds=[i])
        ec2.delete_key_pair(KeyName="mine")
    assert wait_state(ec2, [i])[0]["State"]["Name"] == "terminated"


def aws(*args: str) -> subprocess.CompletedProcess:
    """The AWS CLI with the profiles deploy-nimbus wrote (AWS_CONFIG_FILE), as a user runs it."""
    import os
    import sys
    from pathlib import Path
    return subprocess.run([str(Path(sys.executable).parent / "aws"), *args], capture_output=True, text=True,
                          env={**os.environ, "AWS_CONFIG_FILE": str(deploy.AWS_CONFIG)}, timeout=120)


def test_cumulus_serves_s3_to_the_aws_cli_and_boto3(clouds, tmp_path):
    import random
    tb, run, info = clouds
    s3 = deploy.s3_client(info["nancy"])
    blob = tmp_path / "blob"
    blob.write_bytes(data := random.Random(1).randbytes(20 << 20))           # multipart: 8 MiB parts
    assert aws("--profile", "nancy", "s3", "mb", "s3://store").returncode == 0
    r = aws("--profile", "nancy", "s3", "cp", str(blob), "s3://store/blob")
    assert r.returncode == 0, r.stderr
    head = s3.head_object(Bucket="store", Key="blob")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')     # 3 parts
    assert s3.get_object(Bucket="store", Key="blob", Range="bytes=1000-1999")["Body"].read() == data[1000:2000]
    assert s3.get_object(Bucket="store", Key="blob", Range="bytes=-10")["Body"].read() == data[-10:]
    for n in range(5):
        s3.put_object(Bucket="store", Key=f"small/{n}", Body=str(n).encode())
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="store", Prefix="small/",
                                                               PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3 and [o["Key"] for p in pages for o in p["Contents"]] == [f"small/{n}" for n in range(5)]
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "store", "Key": "small/3"}, ExpiresIn=60)
    assert urllib.request.urlopen(url).read() == b"3"
    with pytest.raises(urllib.error.HTTPError):                                    # unsigned: refused
        urllib.request.urlopen(f"{info['nancy']['s3_endpoint']}/store/small/3")
    wrong = deploy.s3_client({**info["nancy"], "secret_key": "wrong"})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        wrong.get_object(Bucket="store", Key="small/3")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    rennes = deploy.s3_client({**info["nancy"], "access_key": info["rennes"]["access_key"],
                               "secret_key": info["rennes"]["secret_key"]})
    with pytest.raises(botocore.exceptions.ClientError):                           # another cloud's key
        rennes.get_object(Bucket="store", Key="small/3")
    assert aws("--profile", "nancy", "s3", "rm", "--recursive", "s3://store").returncode == 0
    assert aws("--profile", "nancy", "s3", "rb", "s3://store").returncode == 0


def test_an_image_uploaded_to_cumulus_is_registered_and_boots(clouds):
    tb, run, info = clouds
    ec2 = deploy.client(info["nancy"])
    disk = vm_image.build(size_mb=deploy_nimbus.Params().image_size_mb).disk
    assert aws("--profile", "nancy", "s3", "mb", "s3://images").returncode == 0
    assert aws("--profile", "nancy", "s3", "cp", str(disk), "s3://images/mine.img").returncode == 0
    r = aws("--profile", "nancy", "ec2", "register-image", "--name", "mine", "--image-location", "images/mine.img")
    assert r.returncode == 0, r.stderr
    image = json.loads(r.stdout)["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[image], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.register_image(Name="other", ImageLocation="images/nothing.img")
    assert e.value.response["Error"]["Code"] == "InvalidParameterValue"
    [i] = [x["InstanceId"] for x in ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]]
    try:
        [guest] = wait_state(ec2, [i])
        assert guest["State"]["Name"] == "running" and guest["ImageId"] == image, guest.get("StateReason")
        assert fetch(guest["PrivateIpAddress"], "ctx").startswith(f"self {i} ")
    finally:
        ec2.terminate_instances(InstanceIds=[i])
    ec2.deregister_image(ImageId=image)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.describe_images(ImageIds=[image])
    assert e.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    aws("--profile", "nancy", "s3", "rm", "--recursive", "s3://images")


def test_readme_aws_cli_block_works_verbatim(clouds, tmp_path):
    import re
    from conftest import ROOT
    block = re.search(r"also runs verbatim in the tests\):\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[1]
    script = tmp_path / "readme.sh"
    script.write_text(f"cd {ROOT}\n{block}")
    tb, run, info = clouds
    try:
        r = subprocess.run(["timeout", "400", "bash", "-euo", "pipefail", str(script)], capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert re.search(r"^12\.\d+$", r.stdout, re.M), r.stdout
    finally:
        ec2 = deploy.client(info["rennes"])
        ec2.delete_key_pair(KeyName="mine")
        (ROOT / "mine.pem").unlink(missing_ok=True)
        for i in ec2.describe_images(Filters=[{"Name": "name", "Values": ["my-disk"]}])["Images"]:
            ec2.deregister_image(ImageId=i["ImageId"])
        aws("--profile", "rennes", "s3", "rm", "--recursive", "s3://images")
        aws("--profile", "rennes", "s3", "rb", "s3://images")


def test_interrupted_deploy_gives_its_nodes_back(clouds):
    """SIGTERM (as oardel or kill would send) once its OAR job runs: the job is ended.
    Runs last: a new deploy-nimbus replaces the module's clouds."""
    import signal
    import subprocess
    import sys
    from conftest import ROOT
    tb, run, info = clouds
    before = set(tb.scheduler.jobs())
    p = subprocess.Popen([sys.executable, "-m", "invoke", "deploy-nimbus", "--sites", "nancy"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (set(tb.scheduler.jobs()) - before) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    new = set(tb.scheduler.jobs()) - before
    assert new, "deploy-nimbus submitted no job"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in err
    assert not set(tb.scheduler.jobs()) & new
