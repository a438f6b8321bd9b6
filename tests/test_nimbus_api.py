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
    assert error_code(lambda: ec2.terminate_instances(InstanceIds=["i-0000"])) == "InvalidInstanceID.NotFound"
    assert error_code(lambda: ec2.describe_instances(InstanceIds=["i-0000"])) == "InvalidInstanceID.NotFound"


def test_placement_spreads_and_respects_capacity(cloud):
    c, endpoint = cloud
    service = api.Service(c)
    slots = service._place(10, 128)
    assert len(slots) == 4
    assert sorted(h for h, _ in slots) == ["vmm-1", "vmm-1", "vmm-2", "vmm-2"]
    assert len({a for _, a in slots}) == 4
