"""Where Resilin's engine runs, measured side by side (why `vmm` is the default under TCG):
the same job flow (a master and one core, c1.medium) with Spark on the instances' VMM
hosts and inside the instances (`debian-spark` guests, as the thesis and Grid'5000 with KVM
run it): deployment (CreationDateTime -> ReadyDateTime), a Word Count streaming step and a
read-mapping application step, each output checked against the sequential answer; one
job flow per placement (a guest under TCG takes minutes)."""
import json
import statistics

from benchmarks import common
from experiments import deploy_nimbus, resilin
from g5kdeploy import engine
from g5kdeploy.nimbus import deploy

REPEATS = 1


def main() -> None:
    tb = common.testbed()
    deploy.teardown(deploy.CLOUDS, tb)
    engine.execute(deploy_nimbus.EXPERIMENT, tb, {"sites": ["rennes"], "vmms_per_site": 2, "vmm_memory_mb": 4096,
                                                  "guests": ["debian-spark"]})
    ep = resilin.Endpoint(json.loads(deploy.CLOUDS.read_text()))
    times: dict[str, dict[str, list[float]]] = {}
    try:
        work = resilin.Workloads(ep, resilin.Params(corpus_mb=1.0, corpus_files=6, split_mb=0.25, genome_kb=30,
                                                    reads=1000, storage_mb=1))
        for _ in range(REPEATS):
            for where in ("vmm", "instance"):
                t = times.setdefault(where, {"deploy": [], "wordcount": [], "readmap": []})
                with ep.job_flow(f"placement {where}", resilin.groups("c1.medium", 2), placement=where) as jid:
                    s = ep.emr.describe_job_flows(JobFlowIds=[jid])["JobFlows"][0]["ExecutionStatusDetail"]
                    t["deploy"].append((s["ReadyDateTime"] - s["CreationDateTime"]).total_seconds())
                    step, equal, _ = work.wordcount(jid, 1)
                    assert equal, f"word count on {where}: {step['Status']}"
                    t["wordcount"].append(resilin.seconds(step))
                    step, equal = work.readmap(jid, 1)
                    assert equal, f"read mapping on {where}: {step['Status']}"
                    t["readmap"].append(resilin.seconds(step))
    finally:
        ep.close()
        deploy.teardown(deploy.CLOUDS, tb)
    for what in ("deploy", "wordcount", "readmap"):
        vmm, guest = (statistics.median(times[w][what]) for w in ("vmm", "instance"))
        print(f"{what:10} on the VMMs {vmm:7.1f} s   in the instances {guest:7.1f} s   instances / VMMs = "
              f"{guest / vmm:5.1f}x   (runs: {times['vmm'][what]} / {times['instance'][what]})")


if __name__ == "__main__":
    main()
