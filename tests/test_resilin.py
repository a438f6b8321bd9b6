"""Resilin on the small testbed (one cloud per site), driven by boto3's own `emr` client and
waiters, and by the AWS CLI, as a user of Amazon EMR drives it: `invoke experiment resilin`
at its smallest, a streaming Word Count in Cumulus equal to the sequential count, a second
step as the thesis's EMR took it, an application step, a TASK group of the other cloud that
executes tasks and is shrunk away mid-step, EMR's errors for bad requests and another
account's job flows, and nothing left once the job flows are terminated. Engines run on the
VMM hosts (TCG's placement), and once inside an instance (the thesis's, and KVM's: a
debian-spark guest whose JVMs start from their class-data archive); both placements are
measured side by side by `invoke benchmark resilin`."""
import json
import time
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.session
import pytest
from botocore.config import Config

from conftest import drawn, own_testbed
from experiments import deploy_nimbus, resilin
from g5kdeploy import engine, remote
from g5kdeploy.results import load
from g5kdeploy.nimbus import deploy
from g5kdeploy.resilin import samples, service
from test_resilin_api import check_shapes, recording

pytestmark = pytest.mark.testbed
BUCKET = "resilin-test"
FAST = {"Delay": 1, "MaxAttempts": 600}


@pytest.fixture(scope="module")
def testbed(small_description):
    with own_testbed(small_description) as tb:
        yield tb


@pytest.fixture(scope="module")
def measured(testbed, tmp_path_factory):
    """`invoke experiment resilin` at its smallest: every kind of run, once."""
    run = engine.execute(resilin.EXPERIMENT, testbed, {
        "sizes": [2], "corpus_mb": 1.0, "corpus_files": 6, "split_mb": 0.25, "genome_kb": 30, "reads": 600,
        "storage_mb": 8, "readers": [1, 2], "storage_repeats": 1, "resize_start": 2, "resize_add": 1,
        "resize_after_s": 2.0, "multicloud_size": 3})
    return load(run.dir), drawn(resilin.EXPERIMENT, run.dir, tmp_path_factory.mktemp("figures"))


def test_the_experiment_redraws_the_thesis_figures_from_checked_runs(measured):
    df, figures = measured
    assert set(df.level) >= {"cloud", "deploy", "step", "storage", "resize", "multicloud"}
    steps = df[df.level == "step"]
    assert sorted(steps.workload) == ["readmap", "wordcount"] and steps.equal.all() and (steps.tasks > 0).all()
    d = df[df.level == "deploy"].iloc[0]
    assert 0 < d.running_s <= d.deploy_s
    st = df[df.level == "storage"]
    assert sorted(st.readers.tolist()) == [1, 2, 2] and (st.bytes == 8 << 20).all()
    r = df[df.level == "resize"].set_index("kind")
    assert r.equal.all() and r.loc["resize", "new_executors"] >= 1 and r.loc["resize", "first_new_task_s"] > 0
    m = df[df.level == "multicloud"].set_index("layout")
    assert m.equal.all() and m.loc["two-clouds", "task_hosts"] == 2 and m.loc["one-cloud", "task_hosts"] == 1
    assert set(figures) == {"fig-4.2-deployment.png", "fig-4.3-wordcount.png", "fig-4.4-readmap.png",
                            "fig-4.5-storage.png", "resize.png", "multicloud.png"}


@pytest.fixture(scope="module")
def federation(testbed):
    """Two clouds (rennes, nancy), Resilin's endpoint for them, Word Count's data and programs
    in rennes's Cumulus; afterwards every job flow is terminated and the clouds destroyed."""
    tb = testbed
    engine.execute(deploy_nimbus.EXPERIMENT, tb, {"guests": ["debian-spark"], "vmm_memory_mb": 2560})
    clouds = json.loads(deploy.CLOUDS.read_text())
    svc = service.Service(clouds)
    server = service.serve(svc, 0, background=True)
    s3 = deploy.s3_client(clouds["rennes"])
    s3.create_bucket(Bucket=BUCKET)
    for name in ("mapper.py", "reducer.py", "wordsplitter.py", "readmap.py"):
        s3.upload_file(str(samples.program(name)), BUCKET, f"bin/{name}")
    texts = samples.corpus(300_000, files=6, seed=4)
    for k, text in enumerate(texts):
        s3.put_object(Bucket=BUCKET, Key=f"input/file-{k:02d}.txt", Body=text.encode())
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield tb, clouds, svc, endpoint, samples.word_counts(texts)
    svc.runner.shutdown()
    server.shutdown()
    assert [k["KeyName"] for k in deploy.client(clouds["rennes"]).describe_key_pairs()["KeyPairs"]
            if k["KeyName"].startswith("resilin-")] == []           # Resilin's own went with it
    assert deploy.teardown(deploy.CLOUDS, tb) == []


def emr_client(clouds, endpoint, site="rennes", **config):
    c = clouds[site]
    return recording(boto3.client("emr", endpoint_url=endpoint, region_name=c["region"],
                                  aws_access_key_id=c["access_key"], aws_secret_access_key=c["secret_key"],
                                  config=Config(**config)))


def output_lines(s3, prefix: str) -> list[str]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    assert f"{prefix}/_SUCCESS" in keys, keys
    return [line for k in sorted(keys) if "/part-" in k
            for line in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode().splitlines()]


def streaming(output: str, reducers: int = 2, split: int = 40000) -> dict:
    return {"Name": f"wordcount {output}", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {
        "Jar": "command-runner.jar",
        "Args": ["hadoop-streaming", "-D", f"mapreduce.input.fileinputformat.split.maxsize={split}",
                 "-files", f"s3://{BUCKET}/bin/mapper.py,s3://{BUCKET}/bin/reducer.py", "-mapper", "mapper.py",
                 "-reducer", "reducer.py", "-input", f"s3://{BUCKET}/input/", "-output", f"s3://{BUCKET}/{output}",
                 "-numReduceTasks", str(reducers)]}}


@pytest.fixture(scope="module")
def cluster(federation):
    """A kept-alive job flow of a master and one core instance with Word Count as its step."""
    tb, clouds, svc, endpoint, _ = federation
    emr = emr_client(clouds, endpoint)
    jid = emr.run_job_flow(
        Name="wordcount", ReleaseLabel="emr-7.5.0", Applications=[{"Name": "Spark"}, {"Name": "Hadoop"}],
        LogUri=f"s3://{BUCKET}/logs/", VisibleToAllUsers=True,
        Instances={"InstanceGroups": [
            {"Name": "Master", "InstanceRole": "MASTER", "InstanceType": "m1.small", "InstanceCount": 1},
            {"Name": "Core", "InstanceRole": "CORE", "InstanceType": "m1.small", "InstanceCount": 1}],
            "KeepJobFlowAliveWhenNoSteps": True},
        Steps=[streaming("out-1")])["JobFlowId"]
    emr.get_waiter("cluster_running").wait(ClusterId=jid, WaiterConfig=FAST)
    return emr, jid


def test_a_streaming_step_counts_the_words_of_the_sequential_run(federation, cluster):
    _, clouds, _, _, reference = federation
    emr, jid = cluster
    step = emr.list_steps(ClusterId=jid)["Steps"][0]
    emr.get_waiter("step_complete").wait(ClusterId=jid, StepId=step["Id"], WaiterConfig=FAST)
    assert samples.counts_of(output_lines(deploy.s3_client(clouds["rennes"]), "out-1")) == reference
    c = emr.describe_cluster(ClusterId=jid)["Cluster"]
    assert c["Status"]["State"] == "WAITING" and not c["AutoTerminate"]
    assert {a["Name"] for a in c["Applications"]} == {"Spark", "Hadoop"}
    flow = emr.describe_job_flows(JobFlowIds=[jid])["JobFlows"][0]
    t, s = flow["ExecutionStatusDetail"], flow["Steps"][0]["ExecutionStatusDetail"]
    assert t["CreationDateTime"] <= t["StartDateTime"] <= t["ReadyDateTime"] <= s["StartDateTime"] <= s["EndDateTime"]
    logs = [o["Key"] for o in deploy.s3_client(clouds["rennes"]).list_objects_v2(
        Bucket=BUCKET, Prefix=f"logs/{jid}/steps/{step['Id']}/")["Contents"]]
    assert {k.rsplit("/", 1)[1] for k in logs} >= {"stdout", "stderr", "events"}
    check_shapes(emr)


def test_a_second_step_as_the_thesis_gave_it_and_an_application_step(federation, cluster):
    """The streaming JAR with the programs as object URLs and Hadoop's aggregate reducer; then
    a Spark application from Cumulus whose hits equal the sequential mapping."""
    _, clouds, _, _, reference = federation
    emr, jid = cluster
    s3 = deploy.s3_client(clouds["rennes"])
    genome = samples.genome(30_000, seed=2)
    reads = samples.reads(genome, 300, seed=3)
    s3.put_object(Bucket=BUCKET, Key="genome.txt", Body=genome.encode())
    s3.put_object(Bucket=BUCKET, Key="reads.tsv", Body="".join(f"{r}\t{q}\n" for r, q, _ in reads).encode())
    ids = emr.add_job_flow_steps(JobFlowId=jid, Steps=[
        {"Name": "thesis wordcount", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {
            "Jar": "/home/hadoop/contrib/streaming/hadoop-streaming.jar",
            "Args": ["-input", f"s3n://{BUCKET}/input/", "-output", f"s3n://{BUCKET}/out-2",
                     "-mapper", f"s3n://{BUCKET}/bin/wordsplitter.py", "-reducer", "aggregate"]}},
        {"Name": "readmap", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": ["spark-submit", "--deploy-mode", "cluster", f"s3://{BUCKET}/bin/readmap.py",
                     f"s3://{BUCKET}/genome.txt", f"s3://{BUCKET}/reads.tsv", f"s3://{BUCKET}/hits", "2", "4"]}}])["StepIds"]
    for sid in ids:
        emr.get_waiter("step_complete").wait(ClusterId=jid, StepId=sid, WaiterConfig=FAST)
    assert samples.counts_of(output_lines(s3, "out-2")) == reference
    hits = {(r, int(a), int(m)) for r, a, m in (line.split("\t") for line in output_lines(s3, "hits"))}
    assert hits == samples.read_hits(genome, reads, 2)
    assert [s["Id"] for s in emr.list_steps(ClusterId=jid)["Steps"]][:2] == ids[::-1]      # newest first, as EMR
    check_shapes(emr)


def test_a_task_group_of_the_other_cloud_executes_tasks_and_is_shrunk_away_mid_step(federation, cluster):
    _, clouds, _, _, reference = federation
    emr, jid = cluster
    gid = emr.add_instance_groups(JobFlowId=jid, InstanceGroups=[
        {"Name": "nancy tasks", "InstanceRole": "TASK", "InstanceType": "m1.small@nancy", "InstanceCount": 1}])[
        "InstanceGroupIds"][0]
    wait_group(emr, jid, gid, running=1)
    task = emr.list_instances(ClusterId=jid, InstanceGroupTypes=["TASK"])["Instances"][0]
    nancy = deploy.client(clouds["nancy"]).describe_instances(InstanceIds=[task["Ec2InstanceId"]])
    vmm = nancy["Reservations"][0]["Instances"][0]["Placement"]["HostId"]
    sid = emr.add_job_flow_steps(JobFlowId=jid, Steps=[streaming("out-3", reducers=3)])["StepIds"][0]
    emr.get_waiter("step_complete").wait(ClusterId=jid, StepId=sid, WaiterConfig=FAST)
    s3 = deploy.s3_client(clouds["rennes"])
    assert samples.counts_of(output_lines(s3, "out-3")) == reference
    events = [json.loads(line) for line in s3.get_object(
        Bucket=BUCKET, Key=f"logs/{jid}/steps/{sid}/events")["Body"].read().decode().splitlines()]
    hosts = {e["Task Info"]["Host"] for e in events if e["Event"] == "SparkListenerTaskEnd"}
    assert remote_address(vmm) in hosts and len(hosts) == 2, hosts      # the core's VMM and nancy's
    with pytest.raises(botocore.exceptions.ClientError) as e:
        core = emr.list_instance_groups(ClusterId=jid)["InstanceGroups"]
        emr.modify_instance_groups(ClusterId=jid, InstanceGroups=[
            {"InstanceGroupId": next(g["Id"] for g in core if g["InstanceGroupType"] == "CORE"), "InstanceCount": 0}])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    sid = emr.add_job_flow_steps(JobFlowId=jid, Steps=[streaming("out-4", reducers=3)])["StepIds"][0]
    while emr.describe_step(ClusterId=jid, StepId=sid)["Step"]["Status"]["State"] == "PENDING":
        time.sleep(0.2)
    emr.modify_instance_groups(ClusterId=jid, InstanceGroups=[             # while the step runs
        {"InstanceGroupId": gid, "EC2InstanceIdsToTerminate": [task["Ec2InstanceId"]]}])
    emr.get_waiter("step_complete").wait(ClusterId=jid, StepId=sid, WaiterConfig=FAST)
    assert samples.counts_of(output_lines(s3, "out-4")) == reference
    wait_group(emr, jid, gid, running=0)
    state = deploy.client(clouds["nancy"]).describe_instances(InstanceIds=[task["Ec2InstanceId"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")
    check_shapes(emr)


def remote_address(hostname: str) -> str:
    import socket
    return socket.gethostbyname(hostname)


def wait_group(emr, jid, gid, running: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g = next(g for g in emr.list_instance_groups(ClusterId=jid)["InstanceGroups"] if g["Id"] == gid)
        if g["RunningInstanceCount"] == running and g["Status"]["State"] == "RUNNING":
            return
        time.sleep(1)
    raise AssertionError(f"group {gid} not at {running} running instances: {g}")


def test_bad_requests_get_emr_errors_and_leave_nothing(federation, cluster):
    tb, clouds, svc, endpoint, _ = federation
    emr, jid = cluster
    before = {s: alive(clouds[s]) for s in clouds}

    def code(call, **kwargs):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(**kwargs)
        return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]

    kind, message = code(emr.run_job_flow, Name="x", Instances={
        "MasterInstanceType": "m5.24xlarge", "InstanceCount": 1})
    assert kind == "ValidationException" and "m5.24xlarge" in message
    assert code(emr.run_job_flow, Name="x", Instances={"MasterInstanceType": "m1.small@mars", "InstanceCount": 1})[0] \
        == "ValidationException"
    unchecked = emr_client(clouds, endpoint, parameter_validation=False)      # past boto3's own checks
    kind, message = code(unchecked.run_job_flow, Instances={"MasterInstanceType": "m1.small", "InstanceCount": 1})
    assert kind == "ValidationException" and "'name'" in message
    assert code(emr.describe_cluster, ClusterId="j-NOSUCHCLUSTER")[0] == "InvalidRequestException"
    assert code(emr_client({"rennes": {**clouds["rennes"], "secret_key": "wrong"}}, endpoint).list_clusters)[0] \
        == "InvalidSignatureException"
    stranger = emr_client(clouds, endpoint, site="nancy")          # another cloud's account: not its job flow
    assert code(stranger.describe_cluster, ClusterId=jid)[0] == "InvalidRequestException"
    assert code(stranger.terminate_job_flows, JobFlowIds=[jid])[0] == "ValidationException"
    assert jid not in [c["Id"] for c in stranger.list_clusters()["Clusters"]]
    assert {s: alive(clouds[s]) for s in clouds} == before


def alive(cloud) -> list[str]:
    return sorted(i["InstanceId"] for r in deploy.client(cloud).describe_instances()["Reservations"]
                  for i in r["Instances"] if i["State"]["Name"] in ("pending", "running"))


def test_terminated_job_flows_leave_no_instance_and_no_daemon(federation, cluster):
    tb, clouds, _, _, _ = federation
    emr, jid = cluster
    emr.set_termination_protection(JobFlowIds=[jid], TerminationProtected=True)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        emr.terminate_job_flows(JobFlowIds=[jid])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    emr.set_termination_protection(JobFlowIds=[jid], TerminationProtected=False)
    emr.terminate_job_flows(JobFlowIds=[jid])
    emr.get_waiter("cluster_terminated").wait(ClusterId=jid, WaiterConfig=FAST)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        emr.add_job_flow_steps(JobFlowId=jid, Steps=[streaming("never")])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert jid in [c["Id"] for c in emr.list_clusters(ClusterStates=["TERMINATED"])["Clusters"]]
    assert all(alive(clouds[s]) == [] for s in clouds)
    left = remote.run("pgrep -af '[o]rg.apache.spark' || true; ls /var/lib/g5kdeploy-resilin 2>/dev/null || true",
                      tb.nodes())
    assert all(r.ok and not r.stdout.strip() for r in left), [(r.host, r.stdout) for r in left]
    check_shapes(emr)


def test_an_engine_inside_an_instance_starts_from_its_own_archive_and_counts_the_words(federation):
    """Placement `instance` (the thesis's, and Grid'5000's with KVM): one c1.medium
    debian-spark instance (2 vCPUs) runs the master and the core; every JVM there maps the
    class-data archive the guest's JVM dumped (g5kdeploy.resilin.cds), the daemons' web UIs
    listen on the loopback only; the count equals the sequential one."""
    import subprocess
    _, clouds, svc, endpoint, reference = federation
    emr = emr_client(clouds, endpoint)
    jid = emr.run_job_flow(
        Name="inside", Configurations=[{"Classification": "resilin", "Properties": {"placement": "instance"}}],
        Instances={"MasterInstanceType": "c1.medium", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        Steps=[streaming("out-inside", reducers=1, split=200_000)])["JobFlowId"]
    try:
        emr.get_waiter("cluster_running").wait(ClusterId=jid, WaiterConfig=FAST)
        step = emr.list_steps(ClusterId=jid)["Steps"][0]
        emr.get_waiter("step_complete").wait(ClusterId=jid, StepId=step["Id"], WaiterConfig=FAST)
        assert samples.counts_of(output_lines(deploy.s3_client(clouds["rennes"]), "out-inside")) == reference
        address = emr.list_instances(ClusterId=jid)["Instances"][0]["PrivateIpAddress"]

        def inside(command: str) -> str:
            r = subprocess.run(remote.login(svc.runner.clouds.key_pair("rennes")[1], address, command),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            return r.stdout
        mapped = inside("for p in $(pgrep -x java); do grep -c /opt/g5kdeploy/spark/spark.jsa /proc/$p/maps; done")
        assert len(mapped.split()) == 2 and all(int(n) > 0 for n in mapped.split()), mapped   # the master, the worker
        listening = [line.split()[3] for line in inside("ss -Hltnp").splitlines() if '"java"' in line]
        assert sorted("127.0.0.1" in a for a in listening) == [False, False, True, True], listening   # UIs: loopback
    finally:
        emr.terminate_job_flows(JobFlowIds=[jid])
        emr.get_waiter("cluster_terminated").wait(ClusterId=jid, WaiterConfig=FAST)


def test_what_a_killed_daemon_left_is_reaped_when_it_starts_again(federation):
    """kill -9 leaves the job flow's instances and engines; the next start of the daemon
    stops those engines, terminates those instances and deletes its key pairs."""
    import os
    import signal
    tb, clouds, _, _, _ = federation
    info = service.start(deploy.CLOUDS)
    try:
        emr = emr_client(clouds, info["endpoint"])
        jid = emr.run_job_flow(Name="orphan", Instances={
            "MasterInstanceType": "m1.small", "SlaveInstanceType": "m1.small", "InstanceCount": 2,
            "KeepJobFlowAliveWhenNoSteps": True})["JobFlowId"]
        emr.get_waiter("cluster_running").wait(ClusterId=jid, WaiterConfig=FAST)
        os.kill(info["pid"], signal.SIGKILL)
        os.waitpid(info["pid"], 0)                           # our child
        owned = [{"Name": "tag:resilin:owner", "Values": [service.owner()]},
                 {"Name": "instance-state-name", "Values": ["pending", "running"]}]
        rennes = deploy.client(clouds["rennes"])
        assert len([i for r in rennes.describe_instances(Filters=owned)["Reservations"] for i in r["Instances"]]) == 2
        pids = remote.run(f"cat /var/lib/g5kdeploy-resilin/{jid}/*/pid 2>/dev/null || true", tb.nodes())
        engines = {r.host: r.stdout.split() for r in pids if r.stdout.strip()}
        assert sum(map(len, engines.values())) == 2           # a master and a worker, left running
        again = service.start(deploy.CLOUDS)
        assert again["pid"] != info["pid"] and emr_client(clouds, again["endpoint"]).list_clusters()["Clusters"] == []
        assert all(i["State"]["Name"] in ("shutting-down", "terminated") for r in rennes.describe_instances(
            Filters=owned[:1])["Reservations"] for i in r["Instances"])
        for host, ps in engines.items():
            r = remote.run("".join(f"kill -0 {p} 2>/dev/null && echo {p}; " for p in ps)
                           + f"ls -d /var/lib/g5kdeploy-resilin/{jid} 2>/dev/null; true", [host])[0]
            assert r.ok and not r.stdout.strip(), (host, r.stdout)
        assert not [k for k in rennes.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("resilin-")
                    and service.owner() in k["KeyName"]]
    finally:
        service.stop()


def test_readme_aws_cli_block_works_verbatim(federation, tmp_path):
    """The README's block: invoke resilin-up, the AWS CLI's `aws emr` from create-cluster to
    terminate-clusters, invoke resilin-down (which leaves the profiles without Resilin)."""
    import re
    import subprocess
    from conftest import ROOT
    tb, clouds, _, _, _ = federation
    block = re.search(r"runs verbatim in the\s+tests \(`test_resilin.py`\):\n\n```bash\n(.*?)```",
                      (ROOT / "README.md").read_text(), re.S)[1]
    script = tmp_path / "readme.sh"
    script.write_text(f"cd {ROOT}\n{block}")
    s3 = deploy.s3_client(clouds["rennes"])
    try:
        r = subprocess.run(["timeout", "600", "bash", "-euo", "pipefail", str(script)], capture_output=True, text=True,
                           cwd=tmp_path)
        log = service.home() / "service.log"
        assert r.returncode == 0, (r.stderr[-2000:], r.stdout[-500:], log.read_text()[-1500:] if log.exists() else "")
        top = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
        counts = samples.word_counts([(Path("/tmp/books") / f"part-{k}.txt").read_text() for k in range(4)])
        assert len(top) == 3 and all(counts[w] == int(n) for w, n in top)
        assert sorted(int(n) for _, n in top) == sorted(n for _, n in counts.most_common(3))
        assert "emr" not in deploy.AWS_CONFIG.read_text() and service.running() is None
    finally:
        import shutil
        shutil.rmtree("/tmp/books", ignore_errors=True)
        service.stop()
        if "books" in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            for o in s3.list_objects_v2(Bucket="books").get("Contents", []):
                s3.delete_object(Bucket="books", Key=o["Key"])
            s3.delete_bucket(Bucket="books")
