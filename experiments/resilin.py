"""resilin: Elastic MapReduce over the federation's clouds (thesis §4.4), redrawn from rows.

One Nimbus-style cloud per site; Resilin's EMR endpoint for them (in this process, over
HTTP); every job flow asked with boto3's `emr` client as an EMR user would, its data in the
first cloud's Cumulus. Instances are `instance_type` (1 core each); the engine is Spark
standalone where Resilin places it (g5kdeploy.resilin.placement: the VMM hosts under TCG).

  * deployment (Fig 4.2): for each of `sizes` instances (a master + cores), CreationDateTime
    -> ReadyDateTime of a kept-alive job flow (and -> StartDateTime: instances running);
  * Word Count (Fig 4.3): a streaming step on that job flow over a seeded text collection
    of `corpus_files` uneven files (the World Factbook sample's shape), `reduces_per_instance`
    reducers per core; the counts must equal the sequential count;
  * read mapping (Fig 4.4, standing for CloudBurst): an application step (spark-submit of a
    program in Cumulus); its hits must equal the sequential mapping's;
  * storage (Fig 4.5): `readers` parallel reads of one `storage_mb` object from the cluster;
  * resize: Word Count on `resize_start` instances; `resize_after_s` after the step starts,
    a TASK group of `resize_add` joins; time to the new executors' first task, makespan
    against the same step without the resize (the size run of `resize_start` instances,
    when it is one of `sizes`: the same step on the same job flow, not run twice);
  * multi-cloud: Word Count on a master + cores of the first cloud plus a TASK group of the
    second (`m1.tiny@<site>`) against the same number of instances on the first cloud alone
    (likewise the size run of `multicloud_size` instances, when there is one).

Rows, by `level`: deploy (size, repeat, deploy_s, running_s), step (workload, size, repeat,
time_s, equal, tasks, executors), storage (readers, repeat, reader, bytes, time_s, mb_s),
resize (kind, makespan_s, requested_at_s, first_new_task_s, new_executors, equal),
multicloud (layout, instances, makespan_s, equal, remote_tasks), cloud (the clouds'
deployment, as deploy-nimbus)."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from g5kdeploy.engine import Experiment, param, reserved, stage, sweep
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus import deploy
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.resilin import samples, service
from g5kdeploy.testbed import Testbed

BUCKET = "resilin-data"
WAIT = {"Delay": 1, "MaxAttempts": 3600}


@dataclass(frozen=True)
class Params:
    sites: list[str] = param(["rennes", "nancy"], "one cloud per site; the first holds the data and the job flows")
    vmms_per_site: int = param(1, "VMM nodes per cloud")
    vmm_memory_mb: int = param(2048, "guest memory each VMM offers")
    instance_type: str = param("m1.tiny", "the instances' type (1 core each)")
    sizes: list[int] = param([2, 3, 5, 9], "instances per job flow (a master + cores): Figs 4.2-4.4")
    repeats: int = param(1, "runs of each size")
    corpus_mb: float = param(8.0, "Word Count's text collection (the thesis: 1.8 GB)")
    corpus_files: int = param(12, "its files (3/4 large, the rest small)")
    split_mb: float = param(1.0, "input split size")
    reduces_per_instance: int = param(2, "reduce tasks per core instance (the thesis: 2)")
    genome_kb: int = param(200, "read mapping: reference length (kbp)")
    reads: int = param(20000, "read mapping: reads (36 bp, up to `mismatches` substitutions)")
    mismatches: int = param(2, "read mapping: mismatches allowed")
    storage_mb: int = param(64, "the object read for the storage bandwidth (the thesis: 1.8 GB)")
    readers: list[int] = param([1, 2], "parallel readers")
    storage_repeats: int = param(3, "reads of each reader count")
    resize_start: int = param(3, "resize run: instances at the start (a master + cores)")
    resize_add: int = param(2, "resize run: TASK instances added while the step runs (0: no resize run)")
    resize_after_s: float = param(5.0, "resize run: seconds after the step started")
    multicloud_size: int = param(5, "multi-cloud run: instances in all (0: no multi-cloud run)")
    walltime: str = param("2:00", "OAR walltime, H:MM")
    FULL = {"repeats": 3, "corpus_mb": 32.0, "reads": 60000}


class Endpoint:
    """Resilin's EMR endpoint for the clouds (in this process, over HTTP), boto3 clients."""

    def __init__(self, clouds: dict):
        self.clouds, self.first = clouds, next(iter(clouds))
        self.service = service.Service(clouds)
        self.server = service.serve(self.service, 0, background=True)
        import boto3
        c = clouds[self.first]
        self.emr = boto3.client("emr", endpoint_url=f"http://127.0.0.1:{self.server.server_address[1]}",
                                region_name=c["region"], aws_access_key_id=c["access_key"],
                                aws_secret_access_key=c["secret_key"])
        self.s3 = deploy.s3_client(c)

    def close(self) -> None:
        self.service.runner.shutdown()
        self.server.shutdown()

    def lines(self, prefix: str) -> list[str]:
        keys = sorted(o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                      for o in page.get("Contents", []))
        if f"{prefix}/_SUCCESS" not in keys:
            raise RuntimeError(f"s3://{BUCKET}/{prefix} has no _SUCCESS: the step did not finish its output")
        return [x for k in keys if "/part-" in k
                for x in self.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode().splitlines()]

    def events(self, flow: str, step: str) -> list[dict]:
        body = self.s3.get_object(Bucket=BUCKET, Key=f"logs/{flow}/steps/{step}/events")["Body"].read().decode()
        return [json.loads(x) for x in body.splitlines() if x.strip()]

    @contextmanager
    def job_flow(self, name: str, groups: list[dict], placement: str | None = None):
        """A kept-alive job flow of these instance groups (engines placed as asked, or as
        Resilin chooses), running; terminated afterwards."""
        more = {"Configurations": [{"Classification": "resilin", "Properties": {"placement": placement}}]} \
            if placement else {}
        jid = self.emr.run_job_flow(Name=name, ReleaseLabel="emr-7.5.0", LogUri=f"s3://{BUCKET}/logs/",
                                    Applications=[{"Name": "Spark"}, {"Name": "Hadoop"}],
                                    Instances={"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": True},
                                    **more)["JobFlowId"]
        try:
            self.emr.get_waiter("cluster_running").wait(ClusterId=jid, WaiterConfig=WAIT)
            yield jid
        finally:
            self.emr.terminate_job_flows(JobFlowIds=[jid])
            self.emr.get_waiter("cluster_terminated").wait(ClusterId=jid, WaiterConfig=WAIT)

    def step(self, jid: str, name: str, jar: str, args: list[str], started=None) -> dict:
        """Run one step to its end; its Step (times as epoch s). `started(step_id)` is called
        once it runs."""
        sid = self.emr.add_job_flow_steps(JobFlowId=jid, Steps=[{"Name": name, "ActionOnFailure": "CONTINUE",
                                                                 "HadoopJarStep": {"Jar": jar, "Args": args}}])["StepIds"][0]
        if started:
            while self.emr.describe_step(ClusterId=jid, StepId=sid)["Step"]["Status"]["State"] == "PENDING":
                time.sleep(0.2)
            started(sid)
        self.emr.get_waiter("step_complete").wait(ClusterId=jid, StepId=sid, WaiterConfig=WAIT)
        return self.emr.describe_step(ClusterId=jid, StepId=sid)["Step"]


def groups(itype: str, master_and_cores: int, tasks: int = 0, task_cloud: str = "") -> list[dict]:
    out = [{"Name": "Master", "InstanceRole": "MASTER", "InstanceType": itype, "InstanceCount": 1}]
    if master_and_cores > 1:
        out.append({"Name": "Core", "InstanceRole": "CORE", "InstanceType": itype, "InstanceCount": master_and_cores - 1})
    if tasks:
        out.append({"Name": "Task", "InstanceRole": "TASK", "InstanceCount": tasks,
                    "InstanceType": f"{itype}@{task_cloud}" if task_cloud else itype})
    return out


def seconds(step: dict) -> float:
    t = step["Status"]["Timeline"]
    return (t["EndDateTime"] - t["StartDateTime"]).total_seconds()


def task_rows(events: list[dict]) -> tuple[int, int]:
    ends = [e for e in events if e["Event"] == "SparkListenerTaskEnd"]
    return len(ends), len({e["Task Info"]["Executor ID"] for e in ends})


class Workloads:
    """The data in Cumulus and the steps that use it, with their sequential answers."""

    def __init__(self, ep: Endpoint, p: Params):
        self.ep, self.p = ep, p
        try:
            ep.s3.create_bucket(Bucket=BUCKET)
        except ep.s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        for name in ("mapper.py", "reducer.py", "readmap.py", "cat.py"):
            ep.s3.upload_file(str(samples.program(name)), BUCKET, f"bin/{name}")
        texts = samples.corpus(int(p.corpus_mb * 2**20), p.corpus_files, seed=0)
        for k, text in enumerate(texts):
            ep.s3.put_object(Bucket=BUCKET, Key=f"factbook/part-{k:02d}.txt", Body=text.encode())
        self.counts = samples.word_counts(texts)
        self.genome = samples.genome(p.genome_kb * 1000, seed=1)
        self.read_set = samples.reads(self.genome, p.reads, mismatches=p.mismatches, seed=2)
        ep.s3.put_object(Bucket=BUCKET, Key="genome.txt", Body=self.genome.encode())
        ep.s3.put_object(Bucket=BUCKET, Key="reads.tsv", Body="".join(f"{r}\t{s}\n" for r, s, _ in self.read_set).encode())
        self.hits = samples.read_hits(self.genome, self.read_set, p.mismatches)
        blob = bytes(range(256)) * (2**20 // 256)
        ep.s3.put_object(Bucket=BUCKET, Key="storage.bin", Body=blob * p.storage_mb)
        self.outputs = 0

    def output(self, what: str) -> str:
        self.outputs += 1
        return f"out/{what}-{self.outputs}"

    def wordcount(self, jid: str, cores: int, started=None) -> tuple[dict, bool, str]:
        out = self.output("wordcount")
        step = self.ep.step(jid, "wordcount", "command-runner.jar", [
            "hadoop-streaming", "-D", f"mapreduce.input.fileinputformat.split.maxsize={int(self.p.split_mb * 2**20)}",
            "-files", f"s3://{BUCKET}/bin/mapper.py,s3://{BUCKET}/bin/reducer.py", "-mapper", "mapper.py",
            "-reducer", "reducer.py", "-input", f"s3://{BUCKET}/factbook/", "-output", f"s3://{BUCKET}/{out}",
            "-numReduceTasks", str(max(1, cores * self.p.reduces_per_instance))], started)
        return step, step["Status"]["State"] == "COMPLETED" and samples.counts_of(self.ep.lines(out)) == self.counts, out

    def readmap(self, jid: str, cores: int) -> tuple[dict, bool]:
        out = self.output("hits")
        step = self.ep.step(jid, "readmap", "command-runner.jar", [
            "spark-submit", f"s3://{BUCKET}/bin/readmap.py", f"s3://{BUCKET}/genome.txt", f"s3://{BUCKET}/reads.tsv",
            f"s3://{BUCKET}/{out}", str(self.p.mismatches), str(max(4, 4 * cores))])
        if step["Status"]["State"] != "COMPLETED":
            return step, False
        hits = {(r, int(a), int(m)) for r, a, m in (x.split("\t") for x in self.ep.lines(out))}
        return step, hits == self.hits

    def storage(self, jid: str, readers: int) -> list[dict]:
        out = self.output("storage")
        step = self.ep.step(jid, "storage", "command-runner.jar", [
            "spark-submit", f"s3://{BUCKET}/bin/cat.py", f"s3://{BUCKET}/storage.bin", str(readers),
            f"s3://{BUCKET}/{out}"])
        if step["Status"]["State"] != "COMPLETED":
            raise RuntimeError(f"storage step {step['Status']['State']}: {step['Status'].get('FailureDetails')}")
        body = self.ep.s3.get_object(Bucket=BUCKET, Key=out)["Body"].read().decode()
        return [json.loads(x) for x in body.splitlines() if x.strip()]


def label(value) -> str:
    """A group's label: sizes and counts read back as floats from the rows print as ints."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class Resilin(Experiment):
    name = "resilin"
    Params = Params
    job_name = "resilin"

    def validate(self, p: Params, testbed: Testbed) -> None:
        self.known_sites(testbed, p.sites)
        if not p.sites or p.vmms_per_site < 1 or p.repeats < 1 or p.storage_repeats < 1:
            raise UserError("sites must not be empty; vmms_per_site, repeats and storage_repeats at least 1")
        if any(n < 1 for n in p.sizes) or p.resize_start < 1 or p.resize_add < 0 or p.multicloud_size < 0:
            raise UserError("sizes and resize_start must be at least 1 instance; resize_add, multicloud_size >= 0")
        if p.multicloud_size and (len(p.sites) < 2 or p.multicloud_size < 3):
            raise UserError("a multi-cloud run needs 2 sites and at least 3 instances (0 to skip it)")
        if min(p.corpus_mb, p.split_mb) <= 0 or p.corpus_files < 1 or p.reads < 1 or p.genome_kb < 1:
            raise UserError("corpus_mb, split_mb, corpus_files, reads and genome_kb must be positive")
        if not p.readers or min(p.readers) < 1 or p.storage_mb < 1:
            raise UserError("readers must be a list of counts >= 1 and storage_mb at least 1")
        sizes = {s: site.size for s, site in testbed.description.sites.items()}
        for s, n in self.request(p, testbed).items():
            if n > sizes[s]:
                raise UserError(f"{s} has {sizes[s]} nodes, the clouds need {n}: lower vmms_per_site")

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        return {s: 1 + p.vmms_per_site for s in p.sites}

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        t0 = time.time()
        with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name) as res:
            clouds = deploy.build(run, testbed, res, t0, stage, vmm_memory_mb=p.vmm_memory_mb, guests=(), level="cloud")
            ep = Endpoint(clouds)
            try:
                with stage(run, "data"):
                    work = Workloads(ep, p)
                self._sweep(run, p, ep, work)
            finally:
                ep.close()

    def _sweep(self, run: Run, p: Params, ep: Endpoint, work: Workloads) -> None:
        points = [{"run": "size", "size": n, "repeat": i} for i in range(p.repeats) for n in p.sizes]
        points += [{"run": "storage"}]
        # a size run of resize_start (multicloud_size) instances is also the static (one-cloud) run
        if p.resize_add:
            kinds = ("resize",) if p.resize_start in p.sizes else ("static", "resize")
            points += [{"run": "resize", "kind": k, "repeat": i} for i in range(p.repeats) for k in kinds]
        if p.multicloud_size:
            layouts = ("two-clouds",) if p.multicloud_size in p.sizes else ("one-cloud", "two-clouds")
            points += [{"run": "multicloud", "layout": k, "repeat": i} for i in range(p.repeats) for k in layouts]
        itype, other = p.instance_type, (p.sites[1] if len(p.sites) > 1 else "")

        def measure(q: dict) -> None:
            if q["run"] == "size":
                n, i = q["size"], q["repeat"]
                with ep.job_flow(f"size {n}", groups(itype, n)) as jid:
                    t = ep.emr.describe_job_flows(JobFlowIds=[jid])["JobFlows"][0]["ExecutionStatusDetail"]
                    run.row(level="deploy", size=n, repeat=i,
                            deploy_s=(t["ReadyDateTime"] - t["CreationDateTime"]).total_seconds(),
                            running_s=(t["StartDateTime"] - t["CreationDateTime"]).total_seconds())
                    cores = max(1, n - 1)
                    for workload, (step, equal) in (("wordcount", work.wordcount(jid, cores)[:2]),
                                                    ("readmap", work.readmap(jid, cores))):
                        tasks, executors = task_rows(ep.events(jid, step["Id"]))
                        run.row(level="step", workload=workload, size=n, repeat=i, time_s=seconds(step),
                                equal=equal, state=step["Status"]["State"], tasks=tasks, executors=executors)
                        if workload == "wordcount" and n == p.resize_start and p.resize_add:
                            run.row(level="resize", kind="static", repeat=i, makespan_s=seconds(step), equal=equal)
                        if workload == "wordcount" and n == p.multicloud_size:
                            self._multicloud_row(run, ep, jid, step, equal, "one-cloud", i, n, 0)
            elif q["run"] == "storage":
                with ep.job_flow("storage", groups(itype, 1 + max(p.readers))) as jid:
                    for i in range(p.storage_repeats):
                        for k in p.readers:
                            for r in work.storage(jid, k):
                                run.row(level="storage", readers=k, repeat=i, reader=r["reader"], bytes=r["bytes"],
                                        time_s=r["end"] - r["start"], mb_s=r["bytes"] / 2**20 / (r["end"] - r["start"]))
            elif q["run"] == "resize":
                self._resize(run, p, ep, work, q)
            else:
                self._multicloud(run, p, ep, work, q, other)
        sweep(run, points, measure, name=lambda q: q["run"])

    def _resize(self, run: Run, p: Params, ep: Endpoint, work: Workloads, q: dict) -> None:
        with ep.job_flow(f"resize {q['kind']}", groups(p.instance_type, p.resize_start)) as jid:
            asked = {}

            def grow(sid: str) -> None:
                def later():
                    time.sleep(p.resize_after_s)       # the point of the run: a resize at a chosen time
                    asked["t"] = time.time()
                    ep.emr.add_instance_groups(JobFlowId=jid, InstanceGroups=[{
                        "Name": "added", "InstanceRole": "TASK", "InstanceType": p.instance_type,
                        "InstanceCount": p.resize_add}])
                threading.Thread(target=later, daemon=True).start()
            step, equal, _ = work.wordcount(jid, p.resize_start - 1, grow if q["kind"] == "resize" else None)
            events = ep.events(jid, step["Id"])
            start = step["Status"]["Timeline"]["StartDateTime"].timestamp()
            row = {"kind": q["kind"], "repeat": q["repeat"], "makespan_s": seconds(step), "equal": equal}
            if q["kind"] == "resize":
                new = {e["Executor ID"] for e in events if e["Event"] == "SparkListenerExecutorAdded"
                       and e["Timestamp"] / 1000 > asked.get("t", float("inf"))}
                firsts = [e["Task Info"]["Launch Time"] / 1000 for e in events
                          if e["Event"] == "SparkListenerTaskStart" and e["Task Info"]["Executor ID"] in new]
                row.update(requested_at_s=asked.get("t", float("nan")) - start, new_executors=len(new),
                           first_new_task_s=(min(firsts) - asked["t"]) if firsts else float("nan"))
            run.row(level="resize", **row)

    def _multicloud(self, run: Run, p: Params, ep: Endpoint, work: Workloads, q: dict, other: str) -> None:
        n = p.multicloud_size
        remote_tasks = (n - 1) // 2 if q["layout"] == "two-clouds" else 0
        layout = groups(p.instance_type, n - remote_tasks, remote_tasks, other)
        with ep.job_flow(f"multicloud {q['layout']}", layout) as jid:
            step, equal, _ = work.wordcount(jid, n - 1)
            self._multicloud_row(run, ep, jid, step, equal, q["layout"], q["repeat"], n, remote_tasks)

    @staticmethod
    def _multicloud_row(run: Run, ep: Endpoint, jid: str, step: dict, equal: bool, layout: str, repeat: int, n: int,
                        remote_tasks: int) -> None:
        hosts = {}
        for e in ep.events(jid, step["Id"]):
            if e["Event"] == "SparkListenerTaskEnd":
                hosts[e["Task Info"]["Host"]] = hosts.get(e["Task Info"]["Host"], 0) + 1
        far = {i["PrivateIpAddress"] for i in ep.emr.list_instances(ClusterId=jid, InstanceGroupTypes=["TASK"])[
            "Instances"]}
        run.row(level="multicloud", layout=layout, repeat=repeat, instances=n, remote_instances=remote_tasks,
                makespan_s=seconds(step), equal=equal, remote_instances_up=len(far),
                tasks=sum(hosts.values()), task_hosts=len(hosts))

    def summary(self, df) -> list[str]:
        out = []
        if "level" not in df:
            return out
        d = df[df.level == "deploy"]
        if len(d):
            out.append("deployment (Creation -> Ready): " + ", ".join(
                f"{label(n)} inst {g.deploy_s.median():.1f} s" for n, g in d.groupby("size")))
        s = df[df.level == "step"]
        for w, g in s.groupby("workload"):
            out.append(f"{w}: " + ", ".join(f"{label(n)} inst {x.time_s.median():.1f} s" for n, x in g.groupby("size"))
                       + f"; {int(g.equal.sum())}/{len(g)} outputs equal the sequential answer")
        st = df[df.level == "storage"]
        if len(st):
            out.append("storage read: " + ", ".join(
                f"{label(k)} reader(s) {x.mb_s.median():.1f} MB/s each, {x.groupby('repeat').mb_s.sum().median():.1f} MB/s in all"
                for k, x in st.groupby("readers")))
        r = df[df.level == "resize"]
        if len(r):
            base = r[r.kind == "static"].makespan_s.median()
            grown = r[r.kind == "resize"]
            out.append(f"resize: makespan {grown.makespan_s.median():.1f} s with the TASK group against {base:.1f} s "
                       f"without; its first task {grown.first_new_task_s.median():.1f} s after the request; "
                       f"{int(r.equal.sum())}/{len(r)} equal")
        m = df[df.level == "multicloud"]
        if len(m):
            out.append("multi-cloud: " + ", ".join(f"{k} {x.makespan_s.median():.1f} s" for k, x in m.groupby("layout"))
                       + f"; {int(m.equal.sum())}/{len(m)} equal")
        return out

    def figures(self, df, outdir) -> list:
        plt = pyplot()
        paths = []

        def bars(level, value, title, name, by="size", where=None):
            d = df[df.level == level] if where is None else df[(df.level == level) & where]
            if not len(d):
                return
            g = d.groupby(by)[value]
            fig, ax = plt.subplots(figsize=(5, 3.2))
            xs = [label(k) for k in g.median().index]
            ax.bar(xs, g.median().values, yerr=[g.median() - g.min(), g.max() - g.median()], capsize=3,
                   label=value.replace("_s", ""))
            if level == "deploy":            # of which: until every instance runs (the rest: the engine)
                ax.bar(xs, d.groupby(by)["running_s"].median().values, color="tab:gray", label="instances running")
                ax.legend(fontsize=7)
            ax.set(xlabel=by.replace("size", "instances"), ylabel=value.replace("_s", " (s)"), title=title)
            paths.append(save_figure(fig, outdir / name))
        bars("deploy", "deploy_s", "Deployment time (Fig 4.2)", "fig-4.2-deployment.png")
        bars("step", "time_s", "Word Count (Fig 4.3)", "fig-4.3-wordcount.png", where=df.get("workload") == "wordcount")
        bars("step", "time_s", "Read mapping (Fig 4.4)", "fig-4.4-readmap.png", where=df.get("workload") == "readmap")
        st = df[df.level == "storage"] if "level" in df else df.iloc[0:0]
        if len(st):
            fig, ax = plt.subplots(figsize=(5, 3.2))
            groups_ = [x.mb_s.values for _, x in st.groupby("readers")]
            ax.boxplot(groups_, tick_labels=[f"{label(k)} reader(s)" for k in sorted(st.readers.unique())])
            ax.set(ylabel="MB/s per reader", title="Cumulus read bandwidth (Fig 4.5)")
            paths.append(save_figure(fig, outdir / "fig-4.5-storage.png"))
        bars("resize", "makespan_s", "Word Count with a TASK group added mid-step", "resize.png", by="kind")
        bars("multicloud", "makespan_s", "Word Count on one cloud and on two", "multicloud.png", by="layout")
        return paths


EXPERIMENT = Resilin()
