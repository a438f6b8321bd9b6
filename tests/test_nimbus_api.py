"""The EC2 API on a real Redis, driven by boto3: signatures, images, errors, capacity.
(Guests that boot are covered on the testbed in test_nimbus.py.)"""
import threading

import boto3
import botocore.exceptions
import pytest

from g5kdeploy.nimbus import api
from g5kdeploy.nimbus.config import Cloud, Vmm
from g5kdeploy.nimbus.store import Store

KEY, SECRET = "AKIDTEST", "s3cr3t"


@pytest.fixture
def cloud(redis_address, tmp_path):
    Store(redis_address).r.flushall()
    (tmp_path / "debian.img").write_bytes(b"\0" * 4096)
    c = Cloud(site="rennes", credentials={KEY: SECRET}, vmms=[Vmm("vmm-1", 256), Vmm("vmm-2", 256)],
              pool=("198.19.1.100", "198.19.1.109"), prefix=24, gateway="198.19.1.254", broker="198.19.1.1:8774",
              redis=redis_address, repository=str(tmp_path))
    server = api.serve(api.Service(c), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield c, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def client(endpoint, secret=SECRET):
    return boto3.client("ec2", endpoint_url=endpoint, region_name="rennes", aws_access_key_id=KEY,
                        aws_secret_access_key=secret)


def error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def test_describe_images(cloud):
    c, endpoint = cloud
    images = client(endpoint).describe_images()["Images"]
    assert [i["ImageId"] for i in images] == ["debian"]
    assert images[0]["State"] == "available"


def test_bad_signature_is_refused(cloud):
    c, endpoint = cloud
    assert error_code(lambda: client(endpoint, secret="wrong").describe_images()) == "AuthFailure"


def test_unsigned_request_is_refused(cloud):
    import urllib.error
    import urllib.request
    c, endpoint = cloud
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(endpoint + "/?Action=DescribeImages&Version=2016-11-15")
    assert e.value.code == 401 and b"AuthFailure" in e.value.read()


def test_unknown_action(cloud):
    c, endpoint = cloud
    ec2 = client(endpoint)
    assert error_code(lambda: ec2.describe_vpcs()) == "InvalidAction"


def test_bad_run_requests_leave_nothing(cloud):
    c, endpoint = cloud
    ec2 = client(endpoint)
    assert error_code(lambda: ec2.run_instances(ImageId="nope", MinCount=1, MaxCount=1)) == "InvalidAMIID.NotFound"
    # 2 VMMs x 256 MiB hold 4 m1.small guests
    assert error_code(lambda: ec2.run_instances(ImageId="debian", MinCount=5, MaxCount=5,
                                                InstanceType="m1.small")) == "InsufficientInstanceCapacity"
    assert error_code(lambda: ec2.run_instances(ImageId="debian", MinCount=1, MaxCount=1,
                                                InstanceType="x9.huge")) == "InvalidParameterValue"
    assert error_code(lambda: ec2.run_instances(
        ImageId="debian", MinCount=1, MaxCount=1, TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "propagation", "Value": "ftp"}]}])) == "InvalidParameterValue"
    assert error_code(lambda: ec2.run_instances(
        ImageId="debian", MinCount=1, MaxCount=1, TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "share", "Value": "etc"}]}])) == "InvalidParameterValue"
    assert ec2.describe_instances()["Reservations"] == []
    assert Store(c.redis).instances() == []


def test_unknown_instance(cloud):
    c, endpoint = cloud
    ec2 = client(endpoint)
    assert error_code(lambda: ec2.terminate_instances(InstanceIds=["i-00000000"])) == "InvalidInstanceID.NotFound"
    assert error_code(lambda: ec2.describe_instances(InstanceIds=["i-00000000"])) == "InvalidInstanceID.NotFound"


def test_placement_spreads_and_respects_capacity(cloud):
    c, endpoint = cloud
    service = api.Service(c)
    slots = service._place(10, 128)
    assert len(slots) == 4
    assert sorted(h for h, _ in slots) == ["vmm-1", "vmm-1", "vmm-2", "vmm-2"]
    assert len({a for _, a in slots}) == 4


# -- the request as an attacker sends it (issue 16): signatures bound to the body and scope ------
def signed(endpoint, body: bytes, region="rennes", service="ec2", secret=SECRET):
    """A POST signed by botocore's own SigV4Auth, as boto3 signs it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    request = AWSRequest(method="POST", url=endpoint + "/", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(KEY, secret), service, region).add_auth(request)
    return request


def send(endpoint, body: bytes, headers) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint + "/", data=body, headers=dict(headers))) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


RUN = b"Action=RunInstances&Version=2016-11-15&ImageId=debian&MinCount=1&MaxCount=1"


def test_a_captured_signature_does_not_run_another_body(cloud):
    import hashlib
    c, endpoint = cloud
    captured = signed(endpoint, b"Action=DescribeImages&Version=2016-11-15")
    assert send(endpoint, captured.body, captured.headers)[0] == 200           # the genuine request
    forged = dict(captured.headers, **{"X-Amz-Content-SHA256": hashlib.sha256(captured.body).hexdigest()})
    status, out = send(endpoint, RUN, forged)
    assert status == 401 and b"AuthFailure" in out and b"X-Amz-Content-SHA256" in out
    assert send(endpoint, RUN, captured.headers)[0] == 401                      # nor without the header
    assert client(endpoint).describe_instances()["Reservations"] == []           # nothing was launched


def test_the_credential_scope_must_be_this_clouds(cloud):
    c, endpoint = cloud
    nancy = boto3.client("ec2", endpoint_url=endpoint, region_name="nancy", aws_access_key_id=KEY,
                         aws_secret_access_key=SECRET)
    assert error_code(lambda: nancy.describe_images()) == "AuthFailure"
    other = signed(endpoint, b"Action=DescribeImages&Version=2016-11-15", service="s3")
    status, out = send(endpoint, other.body, other.headers)
    assert status == 401 and b"rennes/ec2" in out


@pytest.mark.parametrize("path, query, body", [
    ("/", "", b"Action=DescribeImages&Version=2016-11-15"),
    ("/", "Version=2016-11-15&Action=DescribeInstances&InstanceId.1=i-1", b""),
    ("/a b/~x", "b=2&a=1&a=0&empty=&sp=a%20b", "UserData=h\u00e9llo+w%C3%B6rld&Tag=a%2Fb".encode()),
])
def test_requests_are_canonicalized_as_botocore_does(path, query, body):
    from urllib.parse import urlsplit
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from g5kdeploy import signature
    request = AWSRequest(method="POST", url=f"http://198.19.1.1:8773{path}" + (f"?{query}" if query else ""),
                         data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    auth = SigV4Auth(Credentials(KEY, SECRET), "ec2", "rennes")
    auth.add_auth(request)
    url = urlsplit(request.url)
    headers = {**request.headers, "Host": url.netloc}            # what the server receives
    signed_headers = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    del request.headers["Authorization"]                        # botocore's canonical request is of the unsigned one
    sent = request.body or b""                                    # botocore keeps an empty body as ''
    ours = signature.canonical_request("POST", url.path, url.query, headers, signed_headers, sent)
    assert ours == auth.canonical_request(request)
    assert signature.verify("POST", url.path, url.query, headers, sent, {KEY: SECRET}, "rennes") == KEY


def test_a_non_utf8_body_is_the_clients_error(cloud):
    c, endpoint = cloud
    request = signed(endpoint, b"Action=DescribeImages&Version=2016-11-15&X=\xff")
    status, out = send(endpoint, request.body, request.headers)
    assert status == 400 and b"InvalidParameterValue" in out


def _raw(port, data: bytes) -> bytes:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(4096)


def test_bad_or_huge_lengths_are_answered_before_any_body_is_read(cloud):
    c, endpoint = cloud
    port = int(endpoint.rsplit(":", 1)[1])
    assert _raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n").startswith(b"HTTP/1.0 400")
    huge = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n\r\n"      # 200 MiB announced, none sent
    assert _raw(port, huge).startswith(b"HTTP/1.0 413")


def test_an_idle_connection_is_closed():
    import logging
    import socket
    from g5kdeploy import web
    server = web.serve(lambda *request: (200, "text/plain", b"ok"), 0, logging.getLogger("test"), idle_timeout=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            assert s.recv(1) == b""             # closed by the server, long before our 10 s
    finally:
        server.shutdown()


# -- ids from users and from Redis never reach a shell as code (issue 16) -------------------------
PLANTED = "i-x;touch${IFS}PWNED"


def _recording_ssh(monkeypatch) -> list[str]:
    commands = []
    monkeypatch.setattr(api.ssh, "run", lambda key, host, command, **kw: commands.append(command) or "{}")
    return commands


def test_a_malformed_instance_id_is_refused_and_runs_nothing(cloud, monkeypatch):
    c, endpoint = cloud
    commands = _recording_ssh(monkeypatch)
    for call in (lambda: client(endpoint).terminate_instances(InstanceIds=[PLANTED]),
                 lambda: client(endpoint).describe_instances(InstanceIds=["i-../../etc"])):
        assert error_code(call) == "InvalidInstanceID.Malformed"
    assert commands == []


def test_an_id_planted_in_redis_is_never_listed_nor_terminated(cloud, monkeypatch):
    c, endpoint = cloud
    commands = _recording_ssh(monkeypatch)
    Store(c.redis).put({"id": PLANTED, "vmm": "vmm-1", "state": "running", "reservation": "r-0", "launch_time": ""})
    ec2 = client(endpoint)
    listed = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert listed == []                                  # what nimbus-destroy would have terminated
    assert commands == []


def test_vmm_commands_keep_each_argument_one_word(monkeypatch):
    import shlex
    from g5kdeploy.nimbus import vmm
    commands = _recording_ssh(monkeypatch)
    service = api.Service.__new__(api.Service)
    service.cloud = Cloud(site="rennes", credentials={}, vmms=[], pool=("198.19.1.100", "198.19.1.109"), prefix=24,
                          gateway="198.19.1.254", broker="198.19.1.1:8774")
    service._stop_vm({"vmm": "vmm-1", "id": PLANTED})
    assert shlex.split(commands[0])[-2:] == ["stop", PLANTED]          # one word, not a second command
    with pytest.raises(SystemExit):                                     # and the agent refuses it
        vmm.main(["stop", PLANTED])


# -- the cloud's state: a stalled Redis is an answer, a failed launch is seen (issue 16) ---------
def test_a_stalled_redis_is_answered_not_waited_for(tmp_path):
    import os
    import signal
    from botocore.config import Config
    from conftest import redis_server
    with redis_server(tmp_path) as (process, address):
        c = Cloud(site="rennes", credentials={KEY: SECRET}, vmms=[Vmm("vmm-1", 256)], pool=("198.19.1.100", "198.19.1.109"),
                  prefix=24, gateway="198.19.1.254", broker="198.19.1.1:8774", redis=address, repository=str(tmp_path))
        server = api.serve(api.Service(c, Store(address, timeout_s=0.5)), 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}", region_name="rennes",
                           aws_access_key_id=KEY, aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))
        os.kill(process.pid, signal.SIGSTOP)                # Redis stalls: it accepts, never answers
        try:
            answer = {}
            asking = threading.Thread(target=lambda: answer.update(code=error_code(ec2.describe_instances)))
            asking.start()
            asking.join(60)                                 # without a socket timeout: forever
            assert not asking.is_alive() and answer["code"] == "Unavailable"
        finally:
            os.kill(process.pid, signal.SIGCONT)
            server.shutdown()


def test_a_launch_that_raises_terminates_its_instances_with_the_reason(cloud, monkeypatch):
    import time
    c, endpoint = cloud
    monkeypatch.setattr(api.propagation, "disks", lambda *a: (_ for _ in ()).throw(RuntimeError("no disk for you")))
    _recording_ssh(monkeypatch)
    ec2 = client(endpoint)
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="debian", MinCount=1, MaxCount=1)["Instances"]]
    deadline = time.monotonic() + 30                        # without the fix: pending until the context timeout
    while (state := _instance(ec2, ids[0]))["State"]["Name"] in ("pending", "shutting-down") \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state["State"]["Name"] == "terminated"
    assert "launch failed: RuntimeError: no disk for you" in state["StateReason"]["Message"]


def _instance(ec2, instance: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]


def test_guests_share_only_the_allowed_vmm_directories(cloud):
    import dataclasses
    c = dataclasses.replace(cloud[0], shares=("/usr", "/var/lib/g5kdeploy-sky"))
    assert c.shared("/usr /var/lib/g5kdeploy-sky/db") == ["/usr", "/var/lib/g5kdeploy-sky/db"]
    for tag in ("/", "/root/.ssh", "/dev/shm", "/usr/../root", "/usr,readonly=off", "usr", "/usrx", "/usr " * 9):
        with pytest.raises(ValueError, match="inside /usr, /var/lib/g5kdeploy-sky"):
            c.shared(tag)
    with pytest.raises(ValueError, match="inside none"):                  # a cloud that allows nothing
        cloud[0].shared("/usr")


def test_the_vmm_and_qemu_refuse_paths_that_would_break_qemus_options(tmp_path, capsys):
    from g5kdeploy.nimbus import vmm
    from g5kdeploy.vm.qemu import Guest
    start = ["start", "--id", "i-00000001", "--ip", "198.18.1.9/24", "--gateway", "198.18.1.254", "--name", "g",
             "--broker", "198.18.1.1:8774", "--ctx", "c", "--copy", str(tmp_path / "none.img")]
    for bad in ("/usr,readonly=off", "/usr/../root", "usr"):
        with pytest.raises(SystemExit):
            vmm.main([*start, "--share", bad])
        assert "not a shareable path" in capsys.readouterr().err
    g = Guest("g", tmp_path / "k", tmp_path / "i", None, tmp_path, shares=["/usr", "/srv,x=y"])
    with pytest.raises(ValueError, match="comma"):
        g.argv("tcg")


def test_a_cloud_we_did_not_deploy_joins_the_clouds_file_and_outlives_deployments(cloud, tmp_path, monkeypatch):
    """invoke cloud-add checks the endpoint with the credentials (a signed DescribeImages),
    writes it as an AWS CLI profile the AWS CLI uses, and nimbus-destroy's teardown leaves it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import invoke
    from g5kdeploy.nimbus import deploy
    c, endpoint = cloud
    monkeypatch.setenv("G5KDEPLOY_HOME", str(tmp_path))
    bad = invoke("cloud-add", "mine", "--endpoint", endpoint, "--access-key", KEY, "--secret-key", "wrong")
    assert bad.returncode == 2 and "cloud mine does not answer with these credentials" in bad.stderr
    assert not (tmp_path / "nimbus" / "clouds.json").exists()
    assert invoke("cloud-add", "mine", "--endpoint", endpoint, "--access-key", KEY, "--secret-key", SECRET,
                  "--region", "rennes").returncode == 0
    again = invoke("cloud-add", "mine", "--endpoint", endpoint, "--access-key", KEY, "--secret-key", SECRET)
    assert again.returncode == 2 and "is in the clouds file already" in again.stderr
    aws = subprocess.run([str(Path(sys.executable).parent / "aws"), "--profile", "mine", "ec2", "describe-images", "--query", "Images[].ImageId",
                          "--output", "text"], capture_output=True, text=True,
                         env={"AWS_CONFIG_FILE": str(tmp_path / "nimbus" / "aws-config"), "PATH": "/usr/bin:/bin"})
    assert aws.returncode == 0 and aws.stdout.split() == ["debian"], aws.stderr
    assert deploy.teardown(tmp_path / "nimbus" / "clouds.json", None) == []     # what nimbus-destroy does
    clouds = json.loads((tmp_path / "nimbus" / "clouds.json").read_text())
    assert clouds["mine"]["kind"] == "external" and clouds["mine"]["endpoint"] == endpoint
    assert invoke("cloud-remove", "mine").returncode == 0
    assert json.loads((tmp_path / "nimbus" / "clouds.json").read_text()) == {}
    gone = invoke("cloud-remove", "mine")
    assert gone.returncode == 2 and "no cloud mine added with cloud-add" in gone.stderr
