"""The EC2 API's breadth, as general-purpose clients use it (boto3, the AWS CLI, botocore's
SigV2 signer), on a real Redis: key pairs, filters, tags, pages, regions and zones, instance
status, state changes, Signature Version 2, DryRun; every response checked element by
element against botocore's own EC2 service model. Guests are not booted here (the launch is
held): booting, ssh with a key pair and reboot/stop/start are covered on the testbed."""
import hashlib
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.session
import pytest
from botocore.config import Config

from g5kdeploy.nimbus import api, keypairs
from g5kdeploy.nimbus.config import Cloud, Vmm
from g5kdeploy.nimbus.store import Store

KEY, SECRET = "AKIDTEST", "s3cr3t"
MODEL = botocore.session.get_session().get_service_model("ec2")


@pytest.fixture
def cloud(redis_address, tmp_path, monkeypatch):
    """A cloud whose launches are held (instances stay pending) and whose VMM commands are
    recorded instead of run; a second region in its federation."""
    Store(redis_address).r.flushall()
    (tmp_path / "debian.img").write_bytes(b"\0" * 4096)
    (tmp_path / "tiny.img").write_bytes(b"\0" * 2048)
    c = Cloud(site="rennes", credentials={KEY: SECRET}, vmms=[Vmm("vmm-1", 1024), Vmm("vmm-2", 1024)],
              pool=("198.19.1.100", "198.19.1.131"), prefix=24, gateway="198.19.1.254", broker="198.19.1.1:8774",
              redis=redis_address, repository=str(tmp_path),
              regions={"rennes": "http://198.19.1.1:8773", "nancy": "http://198.19.2.1:8773"})
    service = api.Service(c)
    commands = []
    monkeypatch.setattr(api.Service, "_launch_or_fail", lambda self, *a: None)
    monkeypatch.setattr(api.Service, "_vmm", lambda self, i, *argv: commands.append(argv) or "{}")
    responses = []
    handle = service.handle

    def recorded(*args):
        status, body = handle(*args)
        responses.append(body)
        return status, body
    service.handle = recorded
    server = api.serve(service, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"cloud": c, "endpoint": f"http://127.0.0.1:{server.server_address[1]}", "store": Store(redis_address),
           "commands": commands, "responses": responses}
    server.shutdown()


def client(cloud, **config):
    return boto3.client("ec2", endpoint_url=cloud["endpoint"], region_name="rennes", aws_access_key_id=KEY,
                        aws_secret_access_key=config.pop("secret", SECRET), config=Config(**config))


def error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def launch(ec2, n=1, **kw):
    return [i["InstanceId"] for i in ec2.run_instances(ImageId="debian", MinCount=n, MaxCount=n, **kw)["Instances"]]


def ids(reservations):
    return sorted(i["InstanceId"] for r in reservations for i in r["Instances"])


# -- the model's own shapes --------------------------------------------------------------------
def conforms(element: ET.Element, shape, where: str) -> list[str]:
    """What in an XML response the EC2 model's shape has no member for (botocore's parser
    would drop it silently: a misspelt element is a field the client never sees)."""
    local = element.tag.split("}")[-1]
    if shape.type_name == "structure":
        names = {m.serialization.get("name", n[0].lower() + n[1:]): m for n, m in shape.members.items()}
        out = []
        for child in element:
            tag = child.tag.split("}")[-1]
            if tag not in names:
                out.append(f"{where}/{tag}")
            else:
                out += conforms(child, names[tag], f"{where}/{tag}")
        return out
    if shape.type_name == "list":
        return [f"{where}/{c.tag.split('}')[-1]}" for c in element if c.tag.split("}")[-1] != "item"] + \
            [x for c in element for x in conforms(c, shape.member, f"{where}/item")]
    return [f"{where}/{local} has children"] if len(element) else []


def check_shapes(cloud):
    """Every response of the test so far conforms to its action's output shape."""
    wrong = []
    for body in cloud["responses"]:
        root = ET.fromstring(body)
        action = root.tag.split("}")[-1].removesuffix("Response")
        if action in ("", "Response") or root.tag == "Response":
            continue                                  # an error
        shape = MODEL.operation_model(action).output_shape
        for child in root:
            tag = child.tag.split("}")[-1]
            if tag == "requestId":
                continue
            if shape is None:
                if tag != "return":
                    wrong.append(f"{action}/{tag}")
                continue
            names = {m.serialization.get("name", n[0].lower() + n[1:]): m for n, m in shape.members.items()}
            wrong += [f"{action}/{tag}"] if tag not in names else conforms(child, names[tag], f"{action}/{tag}")
    assert not wrong, f"elements the EC2 model does not have: {wrong}"


# -- key pairs ---------------------------------------------------------------------------------
def test_key_pairs_with_ec2s_fingerprints(cloud, tmp_path):
    ec2 = client(cloud)
    made = ec2.create_key_pair(KeyName="mine")
    from cryptography.hazmat.primitives import serialization as ser
    private = ser.load_pem_private_key(made["KeyMaterial"].encode(), None)
    pkcs8 = private.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    assert made["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.sha1(pkcs8).digest())
    assert made["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    # an imported ed25519 key: SHA-256 of the key blob, as ssh-keygen -l prints it
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    line = (tmp_path / "k.pub").read_bytes()
    imported = ec2.import_key_pair(KeyName="laptop", PublicKeyMaterial=line)
    printed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")],
                             capture_output=True, text=True, check=True).stdout.split()[1]
    assert "SHA256:" + imported["KeyFingerprint"].rstrip("=") == printed
    # an imported RSA key: MD5 of its DER public key
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "r")], check=True)
    rsa = ec2.import_key_pair(KeyName="old", PublicKeyMaterial=(tmp_path / "r.pub").read_bytes())
    der = subprocess.run(f"ssh-keygen -e -m PKCS8 -f {tmp_path / 'r.pub'} | openssl pkey -pubin -outform DER",
                         shell=True, capture_output=True, check=True).stdout
    assert rsa["KeyFingerprint"] == ":".join(f"{b:02x}" for b in hashlib.md5(der).digest())
    listed = ec2.describe_key_pairs(IncludePublicKey=True)["KeyPairs"]
    assert [k["KeyName"] for k in listed] == ["laptop", "mine", "old"]
    assert next(k for k in listed if k["KeyName"] == "laptop")["PublicKey"] == " ".join(line.decode().split()[:2])
    assert [k["KeyName"] for k in ec2.describe_key_pairs(Filters=[{"Name": "key-type", "Values": ["ed25519"]}])
            ["KeyPairs"]] == ["laptop"]
    assert error_code(lambda: ec2.create_key_pair(KeyName="mine")) == "InvalidKeyPair.Duplicate"
    assert error_code(lambda: ec2.import_key_pair(KeyName="x", PublicKeyMaterial=b"ssh-rsa AAAA\nevil")) \
        == "InvalidKey.Format"
    assert error_code(lambda: ec2.describe_key_pairs(KeyNames=["nope"])) == "InvalidKeyPair.NotFound"
    assert error_code(lambda: launch(ec2, KeyName="nope")) == "InvalidKeyPair.NotFound"
    # the key reaches the instance's context, for its guest's authorized_keys
    [i] = launch(ec2, KeyName="laptop")
    instance = cloud["store"].get(i)
    assert cloud["store"].context(instance["ctx"])["public_key"] == " ".join(line.decode().split()[:2])
    assert ec2.describe_instances(InstanceIds=[i])["Reservations"][0]["Instances"][0]["KeyName"] == "laptop"
    assert ec2.delete_key_pair(KeyName="mine")["Return"] is True
    assert ec2.delete_key_pair(KeyName="mine")["Return"] is True       # EC2: no error for a key gone
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["laptop", "old"]
    check_shapes(cloud)


def test_a_public_key_cannot_smuggle_authorized_keys_options():
    with pytest.raises(keypairs.BadKey):
        keypairs.imported(b'command="sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB')
    with pytest.raises(keypairs.BadKey):
        keypairs.imported(b"ssh-ed25519 AAAA\nssh-ed25519 BBBB")


# -- filters, tags, pages ------------------------------------------------------------------------
def test_filters_select_exactly_as_ec2s_do(cloud):
    ec2 = client(cloud)
    web = launch(ec2, 2, InstanceType="m1.tiny",
                 TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "tier", "Value": "web"}]}])
    db = launch(ec2, 1, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "tier", "Value": "db"}]}])
    [gone] = launch(ec2, 1)
    ec2.terminate_instances(InstanceIds=[gone])
    for i in web + db:
        cloud["store"].update(i, state="running")

    def chosen(*filters):
        return ids(ec2.describe_instances(Filters=[{"Name": n, "Values": v} for n, v in filters])["Reservations"])
    assert chosen(("instance-state-name", ["running"])) == sorted(web + db)
    assert chosen(("instance-state-name", ["terminated"])) == [gone]
    assert chosen(("tag:tier", ["web"])) == sorted(web)
    assert chosen(("tag:tier", ["web", "db"]), ("instance-type", ["m1.small"])) == db      # OR, then AND
    assert chosen(("tag-key", ["tier"])) == sorted(web + db)
    assert chosen(("tag:tier", ["w*"])) == sorted(web)                                    # EC2's wildcards
    ip = cloud["store"].get(db[0])["ip"]
    assert chosen(("private-ip-address", [ip])) == db
    assert chosen(("instance-id", [web[0]])) == [web[0]]
    assert chosen(("image-id", ["tiny"])) == []
    assert error_code(lambda: chosen(("colour", ["red"]))) == "InvalidParameterValue"
    # images
    assert [i["ImageId"] for i in ec2.describe_images(Filters=[{"Name": "name", "Values": ["t*"]}])["Images"]] \
        == ["tiny"]
    # the AWS CLI, as users type it
    out = subprocess.run([str(Path(sys.executable).parent / "aws"), "ec2", "describe-instances",
                          "--endpoint-url", cloud["endpoint"], "--region", "rennes", "--output", "json",
                          "--filters", "Name=instance-state-name,Values=running", "Name=tag:tier,Values=web"],
                         capture_output=True, text=True, env={**os.environ, "AWS_ACCESS_KEY_ID": KEY,
                                                              "AWS_SECRET_ACCESS_KEY": SECRET,
                                                              "AWS_CONFIG_FILE": "/dev/null"})
    assert out.returncode == 0, out.stderr
    assert ids(json.loads(out.stdout)["Reservations"]) == sorted(web)
    check_shapes(cloud)


def test_tags_are_created_described_and_deleted(cloud):
    ec2 = client(cloud)
    [a, b] = launch(ec2, 2)
    ec2.create_tags(Resources=[a, b, "debian"], Tags=[{"Key": "project", "Value": "sky"}, {"Key": "owner", "Value": ""}])
    tags = ec2.describe_tags()["Tags"]
    assert sorted((t["ResourceId"], t["ResourceType"], t["Key"]) for t in tags) == sorted(
        [(r, k, key) for r, k in ((a, "instance"), (b, "instance"), ("debian", "image")) for key in ("owner", "project")])
    assert {t["ResourceId"] for t in ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["image"]}])
            ["Tags"]} == {"debian"}
    ec2.delete_tags(Resources=[a], Tags=[{"Key": "project", "Value": "other"}])     # another value: kept
    ec2.delete_tags(Resources=[b], Tags=[{"Key": "project"}])                       # any value: gone
    inst = {i["InstanceId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert inst == {a: {"project": "sky", "owner": ""}, b: {"owner": ""}}
    assert [i["ImageId"] for i in ec2.describe_images(Filters=[{"Name": "tag:project", "Values": ["sky"]}])
            ["Images"]] == ["debian"]
    assert error_code(lambda: ec2.create_tags(Resources=["i-0123456789abcdef0"], Tags=[{"Key": "k", "Value": "v"}])) \
        == "InvalidInstanceID.NotFound"
    assert error_code(lambda: ec2.create_tags(Resources=["ami-nope"], Tags=[{"Key": "k", "Value": "v"}])) == "InvalidID"
    check_shapes(cloud)


def test_pages_cover_every_instance_once(cloud):
    ec2 = client(cloud)
    made = launch(ec2, 7) + launch(ec2, 5)
    seen = [i for page in ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5})
            for i in ids(page["Reservations"])]
    assert sorted(seen) == sorted(made) and len(seen) == 12
    first = ec2.describe_instances(MaxResults=5)
    assert len(ids(first["Reservations"])) == 5 and first["NextToken"]
    assert error_code(lambda: ec2.describe_instances(MaxResults=4)) == "InvalidParameterValue"
    assert error_code(lambda: ec2.describe_instances(MaxResults=5, InstanceIds=made[:1])) \
        == "InvalidParameterCombination"
    assert error_code(lambda: ec2.describe_instances(NextToken="garbage!")) == "InvalidNextToken"
    check_shapes(cloud)


# -- regions, zones, status, state changes ---------------------------------------------------------
def test_regions_zones_and_instance_status(cloud):
    ec2 = client(cloud)
    regions = ec2.describe_regions()["Regions"]
    assert {r["RegionName"]: r["Endpoint"] for r in regions} == cloud["cloud"].regions
    assert [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]] == ["rennes"]
    assert error_code(lambda: ec2.describe_availability_zones(ZoneNames=["mars"])) == "InvalidParameterValue"
    [a, b] = launch(ec2, 2)
    cloud["store"].update(a, state="running")
    assert [s["InstanceId"] for s in ec2.describe_instance_status()["InstanceStatuses"]] == [a]
    every = {s["InstanceId"]: s["InstanceStatus"]["Status"]
             for s in ec2.describe_instance_status(IncludeAllInstances=True)["InstanceStatuses"]}
    assert every == {a: "ok", b: "initializing"}
    ec2.get_waiter("instance_status_ok").wait(InstanceIds=[a], WaiterConfig={"Delay": 1, "MaxAttempts": 2})
    check_shapes(cloud)


def test_stop_start_and_reboot_go_to_the_vmm_and_keep_the_instance(cloud):
    ec2 = client(cloud)
    [a] = launch(ec2)
    assert error_code(lambda: ec2.stop_instances(InstanceIds=[a])) == "IncorrectInstanceState"     # pending
    cloud["store"].update(a, state="running")
    assert ec2.stop_instances(InstanceIds=[a])["StoppingInstances"][0]["CurrentState"]["Name"] == "stopped"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[a], WaiterConfig={"Delay": 1, "MaxAttempts": 2})
    assert error_code(lambda: ec2.reboot_instances(InstanceIds=[a])) == "IncorrectInstanceState"
    assert ec2.start_instances(InstanceIds=[a])["StartingInstances"][0]["PreviousState"]["Name"] == "stopped"
    ec2.reboot_instances(InstanceIds=[a])
    assert cloud["commands"] == [("control", a, "pause"), ("control", a, "resume"), ("control", a, "reset")]
    assert error_code(lambda: ec2.stop_instances(InstanceIds=[a], DryRun=True)) == "DryRunOperation"
    assert cloud["store"].get(a)["state"] == "running" and len(cloud["commands"]) == 3
    check_shapes(cloud)


# -- Signature Version 2 ---------------------------------------------------------------------------
def test_signature_version_2_is_accepted_and_a_tampered_one_refused(cloud):
    v2 = client(cloud, signature_version="v2")
    assert [i["ImageId"] for i in v2.describe_images()["Images"]] == ["debian", "tiny"]
    assert error_code(lambda: client(cloud, signature_version="v2", secret="wrong").describe_images()) == "AuthFailure"

    def tamper(request, **kw):                  # the signed body, one parameter changed on the way
        assert "ImageId.1=debian" in request.body
        request.body = request.body.replace("ImageId.1=debian", "ImageId.1=debiax")   # same length
    v2.meta.events.register("before-send.ec2.DescribeImages", tamper)
    assert error_code(lambda: v2.describe_images(ImageIds=["debian"])) == "AuthFailure"


def test_signature_version_2_wants_a_fresh_timestamp():
    from datetime import datetime, timedelta, timezone

    from g5kdeploy import signature
    from botocore.auth import SigV2Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    request = AWSRequest(method="POST", url="http://198.19.1.1:8773/", data={"Action": "DescribeImages",
                                                                             "Version": "2016-11-15"})
    SigV2Auth(Credentials(KEY, SECRET)).add_auth(request)
    body = urllib.parse.urlencode(request.data).encode()
    assert signature.verify("POST", "/", "", {"Host": "198.19.1.1:8773"}, body, {KEY: SECRET}, "rennes") == KEY
    later = datetime.now(timezone.utc) + timedelta(minutes=20)
    with pytest.raises(signature.SignatureError, match="too far"):
        signature.verify("POST", "/", "", {"Host": "198.19.1.1:8773"}, body, {KEY: SECRET}, "rennes", now=later)
    with pytest.raises(signature.SignatureError, match="does not match"):
        signature.verify("POST", "/", "", {"Host": "198.19.9.9:8773"}, body, {KEY: SECRET}, "rennes")


def test_register_image_is_refused_in_one_line_when_it_cannot_be_met(cloud):
    ec2 = client(cloud, retries={"max_attempts": 1})
    assert error_code(lambda: ec2.register_image(Name="mine", ImageLocation="nobucket")) == "InvalidParameterValue"
    assert error_code(lambda: ec2.register_image(Name="debian", ImageLocation="b/k")) == "InvalidAMIName.Duplicate"
    assert error_code(lambda: ec2.register_image(Name="mine", ImageLocation="b/k")) == "Unavailable"   # no Cumulus here
    assert error_code(lambda: ec2.deregister_image(ImageId="ami-0123456789abcdef0")) == "InvalidAMIID.NotFound"
    assert [i["ImageId"] for i in ec2.describe_images()["Images"]] == ["debian", "tiny"]
    check_shapes(cloud)
