"""Resilin's EMR API against a real cloud EC2 API whose launches are held (instances stay
pending: no guest, no engine) on a real Redis: boto3's emr client and waiters, every
answer checked member by member against botocore's own EMR service model, EMR's errors,
job flows terminated with their instances. Running engines are covered on the testbed
(test_resilin.py)."""
import json
import time

import boto3
import botocore.exceptions
import botocore.session
import pytest
from botocore.config import Config

from g5kdeploy.resilin import service
import test_ec2_api
from test_ec2_api import KEY, SECRET

cloud = test_ec2_api.cloud          # the fixture: a real EC2 API, launches held

MODEL = botocore.session.get_session().get_service_model("emr")
KINDS = {"structure": dict, "list": list, "map": dict, "string": str, "boolean": bool, "integer": int, "long": int,
         "timestamp": (int, float), "double": (int, float), "float": (int, float)}


def conforms(value, shape, where: str) -> list[str]:
    """What in a JSON answer botocore's shape has no room for: unknown members, wrong types,
    values outside an enum (botocore's parser would drop or mangle them silently)."""
    if not isinstance(value, KINDS[shape.type_name]) or (shape.type_name in ("integer", "long") and
                                                           isinstance(value, bool)):
        return [f"{where}: {type(value).__name__} for a {shape.type_name}"]
    if shape.type_name == "structure":
        return [f"{where}.{k}: not in {shape.name}" for k in value if k not in shape.members] + \
               [x for k, v in value.items() if k in shape.members for x in conforms(v, shape.members[k], f"{where}.{k}")]
    if shape.type_name == "list":
        return [x for n, v in enumerate(value) for x in conforms(v, shape.member, f"{where}[{n}]")]
    if shape.type_name == "map":
        return [x for k, v in value.items() for x in conforms(v, shape.value, f"{where}[{k}]")]
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        return [f"{where}: {value!r} not in {shape.name}"]
    return []


def recording(client):
    """The client, its answers kept as sent (the JSON body) for check_shapes."""
    client.answers = []

    def keep(http_response, model, **_):
        if http_response.status_code == 200:
            client.answers.append((model.name, json.loads(http_response.content or b"{}")))
    client.meta.events.register("after-call.emr", keep)
    return client


def check_shapes(client) -> None:
    problems = []
    for action, body in client.answers:
        shape = MODEL.operation_model(action).output_shape
        problems += conforms(body, shape, action) if shape else [f"{action}: a body for no output"] if body else []
    assert problems == []
    assert client.answers, "nothing was recorded"


@pytest.fixture
def resilin(cloud):
    """Resilin over the held cloud (as its region rennes)."""
    clouds = {"rennes": {"endpoint": cloud["endpoint"], "s3_endpoint": "http://127.0.0.1:9", "region": "rennes",
                         "access_key": KEY, "secret_key": SECRET}}
    svc = service.Service(clouds)
    server = service.serve(svc, 0, background=True)
    emr = recording(boto3.client("emr", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                                 region_name="rennes", aws_access_key_id=KEY, aws_secret_access_key=SECRET))
    ec2 = boto3.client("ec2", endpoint_url=cloud["endpoint"], region_name="rennes", aws_access_key_id=KEY,
                       aws_secret_access_key=SECRET)
    yield emr, ec2, svc, server.server_address[1]
    svc.runner.shutdown()
    server.shutdown()


def alive(ec2) -> list[str]:
    return sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                  if i["State"]["Name"] in ("pending", "running"))


def asked(ec2, n: int, timeout: float = 20) -> list[str]:
    """The cloud's live instances, once the job flow's thread has asked for `n`."""
    deadline = time.monotonic() + timeout
    while len(ids := alive(ec2)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return ids


STEP = {"Name": "wc", "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["hadoop-streaming", "-input", "s3://b/in",
                                                                "-output", "s3://b/out"]}}


def test_a_job_flow_is_described_listed_and_terminated_in_emrs_shapes(resilin):
    emr, ec2, _, _ = resilin
    jid = emr.run_job_flow(Name="flow", ReleaseLabel="emr-7.5.0", Applications=[{"Name": "Spark"}],
                           Instances={"MasterInstanceType": "m1.small", "SlaveInstanceType": "m1.tiny",
                                      "InstanceCount": 3, "KeepJobFlowAliveWhenNoSteps": True},
                           Steps=[STEP], Tags=[{"Key": "team", "Value": "myriads"}],
                           BootstrapActions=[{"Name": "setup", "ScriptBootstrapAction": {"Path": "s3://b/setup.sh",
                                                                                         "Args": ["--fast"]}}],
                           Configurations=[{"Classification": "resilin", "Properties": {"placement": "vmm"}}])["JobFlowId"]
    assert len(asked(ec2, 3)) == 3                     # asked of the cloud: pending there (launches held)
    c = emr.describe_cluster(ClusterId=jid)["Cluster"]
    assert c["Status"]["State"] == "STARTING" and c["Applications"] == [{"Name": "Spark", "Version": "4.3.0"}]
    groups = emr.list_instance_groups(ClusterId=jid)["InstanceGroups"]
    assert sorted((g["InstanceGroupType"], g["InstanceType"], g["RequestedInstanceCount"]) for g in groups) == \
        [("CORE", "m1.tiny", 2), ("MASTER", "m1.small", 1)]
    assert len(emr.list_instances(ClusterId=jid, InstanceGroupTypes=["CORE"])["Instances"]) == 2
    assert emr.list_bootstrap_actions(ClusterId=jid)["BootstrapActions"] == [
        {"Name": "setup", "ScriptPath": "s3://b/setup.sh", "Args": ["--fast"]}]
    extra = emr.add_job_flow_steps(JobFlowId=jid, Steps=[STEP])["StepIds"]
    cancelled = emr.cancel_steps(ClusterId=jid, StepIds=extra)["CancelStepsInfoList"]
    assert cancelled == [{"StepId": extra[0], "Status": "SUBMITTED"}]
    assert emr.describe_step(ClusterId=jid, StepId=extra[0])["Step"]["Status"]["State"] == "CANCELLED"
    assert [x["Id"] for x in emr.list_clusters(ClusterStates=["STARTING"])["Clusters"]] == [jid]
    assert emr.list_clusters(ClusterStates=["TERMINATED"])["Clusters"] == []
    flow = emr.describe_job_flows(JobFlowIds=[jid])["JobFlows"][0]
    assert flow["ExecutionStatusDetail"]["State"] == "STARTING" and flow["Instances"]["InstanceCount"] == 3
    emr.terminate_job_flows(JobFlowIds=[jid])
    emr.get_waiter("cluster_terminated").wait(ClusterId=jid, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert alive(ec2) == []
    steps = {s["Id"]: s["Status"]["State"] for s in emr.list_steps(ClusterId=jid)["Steps"]}
    assert set(steps.values()) == {"CANCELLED"}
    assert emr.describe_cluster(ClusterId=jid)["Cluster"]["Status"]["StateChangeReason"]["Code"] == "USER_REQUEST"
    check_shapes(emr)


def test_bad_requests_get_emrs_errors_and_ask_nothing_of_the_cloud(resilin):
    emr, ec2, _, port = resilin

    def code(call, **kwargs):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(**kwargs)
        return e.value.response["Error"]["Code"]

    one = {"MasterInstanceType": "m1.small", "InstanceCount": 1}
    assert code(emr.run_job_flow, Name="x", Instances={**one, "MasterInstanceType": "c9.huge"}) == "ValidationException"
    assert code(emr.run_job_flow, Name="x", Instances=one, Applications=[{"Name": "Hive"}]) == "ValidationException"
    assert code(emr.run_job_flow, Name="x", Instances=one, Configurations=[
        {"Classification": "resilin", "Properties": {"placement": "moon"}}]) == "ValidationException"
    assert code(emr.run_job_flow, Name="x", Instances=one, Configurations=[
        {"Classification": "hive-site", "Properties": {}}]) == "ValidationException"
    assert code(emr.run_job_flow, Name="x", Instances={"InstanceGroups": [
        {"InstanceRole": "CORE", "InstanceType": "m1.small", "InstanceCount": 2}]}) == "ValidationException"
    assert code(emr.run_job_flow, Name="x", Instances=one, BootstrapActions=[
        {"Name": "b", "ScriptBootstrapAction": {"Path": "/etc/passwd"}}]) == "ValidationException"
    assert code(emr.run_job_flow, Name="x", Instances=one, Steps=[{**STEP, "ActionOnFailure": "PANIC"}]) \
        == "ValidationException"
    unchecked = boto3.client("emr", endpoint_url=f"http://127.0.0.1:{port}", region_name="rennes",
                             aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                             config=Config(parameter_validation=False))
    assert code(unchecked.run_job_flow, Instances=one) == "ValidationException"
    assert code(emr.describe_cluster, ClusterId="j-NOSUCH") == "InvalidRequestException"
    assert code(emr.add_job_flow_steps, JobFlowId="j-NOSUCH", Steps=[STEP]) == "ValidationException"
    stranger = boto3.client("emr", endpoint_url=f"http://127.0.0.1:{port}", region_name="rennes",
                            aws_access_key_id="AKIDSTRANGER", aws_secret_access_key="x")
    assert code(stranger.list_clusters) == "UnrecognizedClientException"
    forger = boto3.client("emr", endpoint_url=f"http://127.0.0.1:{port}", region_name="rennes",
                          aws_access_key_id=KEY, aws_secret_access_key="not-the-secret")
    assert code(forger.list_clusters) == "InvalidSignatureException"
    assert alive(ec2) == [] and emr.list_clusters()["Clusters"] == []


def test_a_protected_job_flow_is_not_terminated_and_a_core_group_not_shrunk(resilin):
    emr, ec2, _, _ = resilin
    jid = emr.run_job_flow(Name="kept", Instances={"MasterInstanceType": "m1.small", "InstanceCount": 2,
                                                   "TerminationProtected": True})["JobFlowId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        emr.terminate_job_flows(JobFlowIds=[jid])
    assert e.value.response["Error"]["Code"] == "ValidationException" and len(asked(ec2, 2)) == 2
    core = next(g["Id"] for g in emr.list_instance_groups(ClusterId=jid)["InstanceGroups"]
                if g["InstanceGroupType"] == "CORE")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        emr.modify_instance_groups(ClusterId=jid, InstanceGroups=[{"InstanceGroupId": core, "InstanceCount": 0}])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    emr.set_termination_protection(JobFlowIds=[jid], TerminationProtected=False)
    emr.terminate_job_flows(JobFlowIds=[jid])
    emr.get_waiter("cluster_terminated").wait(ClusterId=jid, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert alive(ec2) == []
    check_shapes(emr)
