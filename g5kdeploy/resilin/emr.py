"""The Elastic MapReduce API (JSON 1.1, `X-Amz-Target: ElasticMapReduce.<Action>`), shapes
as botocore's emr service model has them (tests/test_resilin_api.py checks every answer
against it): requests validated here, at once, with EMR's error types; carried out by the
job flows' runner (g5kdeploy.resilin.flow)."""
from __future__ import annotations

import time

from g5kdeploy.resilin import objects
from g5kdeploy.resilin import placement as placements
from g5kdeploy.resilin.flow import ALIVE, ENGINE, Flow, Group, Runner, Step, new_id

ROLES = ("MASTER", "CORE", "TASK")
ACTIONS_ON_FAILURE = ("TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE")
APPLICATIONS = {"spark": ENGINE, "hadoop": {"Name": "Hadoop", "Version": f"streaming on Spark {ENGINE['Version']}"}}
JOB_FLOW_STATE = {"TERMINATING": "SHUTTING_DOWN", "TERMINATED_WITH_ERRORS": "FAILED"}
PAGE = 50


class EMRError(Exception):
    def __init__(self, kind: str, message: str, status: int = 400):
        super().__init__(message)
        self.kind, self.message, self.status = kind, message, status


def invalid(message: str) -> EMRError:
    return EMRError("ValidationException", message)


def required(p: dict, name: str, where: str = ""):
    if p.get(name) in (None, ""):
        raise invalid(f"1 validation error detected: Value null at '{where}{name[0].lower() + name[1:]}' "
                      "failed to satisfy constraint: Member must not be null")
    return p[name]


class EMR:
    def __init__(self, runner: Runner, placement: str | None = None):
        self.runner, self.placement = runner, placement or placements.default()

    # helpers ------------------------------------------------------------------------------
    def flow(self, cluster_id: str, cloud: str, kind: str = "InvalidRequestException") -> Flow:
        """A job flow of the account (cloud) that signed the request: another's is unknown."""
        f = self.runner.flows.get(cluster_id or "")
        if f is None or f.cloud != cloud:
            raise EMRError(kind, f"Cluster id '{cluster_id}' is not valid." if kind != "ValidationException"
                           else f"Specified job flow ID not valid: {cluster_id}")
        return f

    def _placement(self, p: dict):
        """Where the job flow's engines run: the service's choice, or a `resilin`
        configuration's `placement` property (EMR's Configurations: how a user tunes a
        cluster)."""
        name = self.placement
        for c in p.get("Configurations") or []:
            if c.get("Classification") == "resilin":
                name = (c.get("Properties") or {}).get("placement", name)
            elif c.get("Classification"):
                raise invalid(f"Configurations of classification {c['Classification']!r} are not supported: "
                              "use 'resilin' (property placement: vmm or instance)")
        if name not in placements.PLACEMENTS:
            raise invalid(f"Unknown placement {name!r}: use one of {', '.join(placements.PLACEMENTS)}")
        return placements.of(name, self.runner.clouds)

    def _instance_type(self, text: str, default_cloud: str, image: str) -> tuple[str, str]:
        """`m1.small` or `m1.small@cloud` -> (type, cloud), the type checked by the cloud
        itself (RunInstances with DryRun, so nothing is started)."""
        itype, _, cloud = text.partition("@")
        cloud = cloud or default_cloud
        if cloud not in self.runner.clouds.entries:
            raise invalid(f"Unknown cloud {cloud!r} in instance type {text!r}: use one of "
                          + ", ".join(self.runner.clouds.entries))
        import botocore.exceptions
        try:
            self.runner.clouds.ec2(cloud).run_instances(ImageId=image, InstanceType=itype, MinCount=1, MaxCount=1,
                                                        DryRun=True)
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] != "DryRunOperation":
                raise invalid(f"Instance type '{itype}' is not supported by cloud {cloud}: "
                              f"{e.response['Error']['Message']}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise EMRError("InternalServerError", f"cloud {cloud} does not answer: {e}", 500) from None
        return itype, cloud

    def _groups(self, spec: dict, cloud: str, image: str) -> list[Group]:
        if spec.get("InstanceFleets"):
            raise invalid("Instance fleets are not supported: use InstanceGroups or Master/SlaveInstanceType")
        groups = []
        if spec.get("InstanceGroups"):
            for k, g in enumerate(spec["InstanceGroups"]):
                role = required(g, "InstanceRole", f"instances.instanceGroups.{k + 1}.member.")
                if role not in ROLES:
                    raise invalid(f"Invalid InstanceRole {role!r}: use one of {', '.join(ROLES)}")
                count = int(required(g, "InstanceCount", f"instances.instanceGroups.{k + 1}.member."))
                itype, where = self._instance_type(required(g, "InstanceType"), cloud, image)
                groups.append(Group(new_id("ig-"), role, itype, where, count, g.get("Name", role.title())))
        else:
            count = int(spec.get("InstanceCount") or 1)
            master = self._instance_type(required(spec, "MasterInstanceType", "instances."), cloud, image)
            groups.append(Group(new_id("ig-"), "MASTER", master[0], master[1], 1, "Master"))
            if count > 1:
                slave = self._instance_type(spec.get("SlaveInstanceType") or master[0], cloud, image)
                groups.append(Group(new_id("ig-"), "CORE", slave[0], slave[1], count - 1, "Core"))
        roles = [g.role for g in groups]
        if roles.count("MASTER") != 1 or next(g for g in groups if g.role == "MASTER").requested != 1:
            raise invalid("A job flow needs exactly one MASTER instance group of 1 instance")
        if roles.count("CORE") > 1:
            raise invalid("A job flow has at most one CORE instance group")
        if any(g.requested < (1 if g.role != "TASK" else 0) for g in groups):
            raise invalid("Instance counts must be at least 1 (0 for TASK groups)")
        return groups

    @staticmethod
    def _steps(configs: list[dict]) -> list[Step]:
        steps = []
        for k, c in enumerate(configs or []):
            where = f"steps.{k + 1}.member."
            name, jar = required(c, "Name", where), required(c.get("HadoopJarStep") or {}, "Jar", where + "hadoopJarStep.")
            action = c.get("ActionOnFailure", "TERMINATE_CLUSTER")
            if action not in ACTIONS_ON_FAILURE:
                raise invalid(f"Invalid ActionOnFailure {action!r}: use one of {', '.join(ACTIONS_ON_FAILURE)}")
            h = c["HadoopJarStep"]
            steps.append(Step(new_id("s-"), name, action, jar, [str(a) for a in h.get("Args", [])],
                              h.get("MainClass", ""), {p["Key"]: p.get("Value", "") for p in h.get("Properties", [])}))
        return steps

    @staticmethod
    def _applications(apps: list[dict]) -> list[dict]:
        out, unknown = [], []
        for a in apps or [{"Name": "Spark"}]:
            (out.append(APPLICATIONS[a.get("Name", "").lower()]) if a.get("Name", "").lower() in APPLICATIONS
             else unknown.append(a.get("Name", "")))
        if unknown:
            raise invalid(f"Applications {', '.join(unknown)} are not supported: Resilin runs Spark "
                          f"{ENGINE['Version']} (and Hadoop streaming on it)")
        return list({a["Name"]: a for a in out}.values())

    # actions ------------------------------------------------------------------------------
    def RunJobFlow(self, p: dict, cloud: str) -> dict:
        name = required(p, "Name")
        spec = required(p, "Instances")
        if p.get("LogUri") and not objects.is_url(p["LogUri"]):
            raise invalid(f"LogUri {p['LogUri']!r} is not an object URL (s3://bucket/prefix)")
        boot = []
        for k, b in enumerate(p.get("BootstrapActions") or []):
            script = required(b, "ScriptBootstrapAction", f"bootstrapActions.{k + 1}.member.")
            path = required(script, "Path", f"bootstrapActions.{k + 1}.member.scriptBootstrapAction.")
            if not objects.is_url(path):
                raise invalid(f"Bootstrap action path {path!r} is not an object URL (s3://bucket/key)")
            boot.append((required(b, "Name", f"bootstrapActions.{k + 1}.member."), path,
                         [str(a) for a in script.get("Args", [])]))
        where = self._placement(p)
        flow = Flow(new_id("j-"), name, cloud, keep_alive=bool(spec.get("KeepJobFlowAliveWhenNoSteps", False)),
                    protected=bool(spec.get("TerminationProtected", False)), log_uri=p.get("LogUri", ""),
                    release_label=p.get("ReleaseLabel") or p.get("AmiVersion", ""),
                    applications=self._applications(p.get("Applications")), bootstrap=boot, tags=p.get("Tags", []),
                    groups=self._groups(spec, cloud, where.image), steps=self._steps(p.get("Steps")),
                    key_name=spec.get("Ec2KeyName", ""), placement=where)
        self.runner.start(flow)
        return {"JobFlowId": flow.id, "ClusterArn": self._arn(flow)}

    def DescribeCluster(self, p: dict, cloud: str) -> dict:
        return {"Cluster": self._cluster(self.flow(required(p, "ClusterId"), cloud))}

    def ListClusters(self, p: dict, cloud: str) -> dict:
        states = p.get("ClusterStates") or []
        flows = [f for f in self._created(p, cloud) if not states or f.state in states]
        return self._page(p, [self._summary(f) for f in flows], "Clusters")

    def DescribeJobFlows(self, p: dict, cloud: str) -> dict:
        ids, states = p.get("JobFlowIds") or [], p.get("JobFlowStates") or []
        flows = [f for f in self._created(p, cloud) if (not ids or f.id in ids) and (not states or self._jf_state(f) in states)]
        return {"JobFlows": [self._job_flow(f) for f in flows]}

    def AddJobFlowSteps(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "JobFlowId"), cloud, "ValidationException")
        steps = self._steps(required(p, "Steps"))
        with self.runner.lock:
            if flow.state not in ALIVE:
                raise invalid("A job flow that is shutting down, terminated, or finished may not be modified.")
            flow.steps += steps
        self.runner.wake(flow)
        return {"StepIds": [s.id for s in steps]}

    def ListSteps(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        states, ids = p.get("StepStates") or [], p.get("StepIds") or []
        steps = [s for s in reversed(flow.steps) if (not states or s.state in states) and (not ids or s.id in ids)]
        return self._page(p, [self._step(s) for s in steps], "Steps")

    def DescribeStep(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        sid = required(p, "StepId")
        step = next((s for s in flow.steps if s.id == sid), None)
        if step is None:
            raise EMRError("InvalidRequestException", f"Step id '{sid}' is not valid.")
        return {"Step": self._step(step)}

    def CancelSteps(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        option = p.get("StepCancellationOption", "SEND_INTERRUPT")
        out = []
        for sid in required(p, "StepIds"):
            step = next((s for s in flow.steps if s.id == sid), None)
            with self.runner.lock:
                if step is None:
                    out.append({"StepId": sid, "Status": "FAILED", "Reason": "no such step"})
                elif step.state == "PENDING":
                    step.state, step.ended = "CANCELLED", time.time()
                    out.append({"StepId": sid, "Status": "SUBMITTED"})
                elif step.state == "RUNNING" and option in ("SEND_INTERRUPT", "TERMINATE_PROCESS"):
                    step.state = "CANCEL_PENDING"
                    self.runner.pool.submit(self.runner.cancel_running, flow, step)
                    out.append({"StepId": sid, "Status": "SUBMITTED"})
                else:
                    out.append({"StepId": sid, "Status": "FAILED", "Reason": f"the step is {step.state}"})
        return {"CancelStepsInfoList": out}

    def AddInstanceGroups(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "JobFlowId"), cloud, "ValidationException")
        groups = [self._new_group(g, flow) for g in required(p, "InstanceGroups")]
        with self.runner.lock:
            if flow.state not in ("RUNNING", "WAITING"):
                raise invalid(f"Instance groups can be added to a RUNNING or WAITING job flow, not a {flow.state} one")
            flow.groups += groups
        for g in groups:
            self.runner.grow(flow, g, g.requested)
        return {"JobFlowId": flow.id, "InstanceGroupIds": [g.id for g in groups], "ClusterArn": self._arn(flow)}

    def _new_group(self, g: dict, flow: Flow) -> Group:
        role = required(g, "InstanceRole")
        if role == "MASTER":
            raise invalid("A MASTER instance group cannot be added to a running job flow")
        if role == "CORE" and any(x.role == "CORE" for x in flow.groups):
            raise invalid("A job flow has at most one CORE instance group")
        if role not in ROLES:
            raise invalid(f"Invalid InstanceRole {role!r}: use one of {', '.join(ROLES)}")
        itype, where = self._instance_type(required(g, "InstanceType"), flow.cloud, flow.placement.image)
        count = int(required(g, "InstanceCount"))
        if count < 1:
            raise invalid("InstanceCount must be at least 1")
        return Group(new_id("ig-"), role, itype, where, count, g.get("Name", role.title()), state="RESIZING")

    def ModifyInstanceGroups(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        plans = []
        for m in required(p, "InstanceGroups"):
            group = flow.group(required(m, "InstanceGroupId"))
            if group is None:
                raise invalid(f"Instance group id '{m['InstanceGroupId']}' is not valid.")
            alive = flow.members(group)
            doomed = [i for i in alive if i.ec2_id in (m.get("EC2InstanceIdsToTerminate") or [])]
            target = int(m.get("InstanceCount", len(alive) - len(doomed)))
            if group.role == "MASTER":
                raise invalid("The MASTER instance group cannot be resized")
            if target < 0:
                raise invalid("InstanceCount must be at least 0")
            if group.role == "CORE" and (doomed or target < group.requested):
                raise invalid("CORE instances cannot be removed from a running job flow (their data would be lost); "
                              "shrink a TASK group instead")
            plans.append((group, alive, doomed, target))
        if flow.state not in ("RUNNING", "WAITING"):
            raise invalid(f"Instance groups of a {flow.state} job flow cannot be modified")
        for group, alive, doomed, target in plans:
            keep = [i for i in alive if i not in doomed]
            if target > len(keep):
                self.runner.grow(flow, group, target - len(keep))
            doomed += list(reversed(keep))[:max(0, len(keep) - target)]
            group.requested = target
            if doomed:
                self.runner.shrink(flow, doomed)
        return {}

    def ListInstanceGroups(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        return self._page(p, [self._group(flow, g) for g in flow.groups], "InstanceGroups")

    def ListInstances(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        gid, roles, states = p.get("InstanceGroupId"), p.get("InstanceGroupTypes") or [], p.get("InstanceStates") or []
        out = [self._instance(i) for i in flow.instances
               if (not gid or i.group == gid) and (not roles or flow.group(i.group).role in roles)
               and (not states or i.state in states)]
        return self._page(p, out, "Instances")

    def ListBootstrapActions(self, p: dict, cloud: str) -> dict:
        flow = self.flow(required(p, "ClusterId"), cloud)
        return self._page(p, [{"Name": n, "ScriptPath": path, "Args": args} for n, path, args in flow.bootstrap],
                          "BootstrapActions")

    def TerminateJobFlows(self, p: dict, cloud: str) -> dict:
        flows = [self.flow(i, cloud, "ValidationException") for i in required(p, "JobFlowIds")]
        if any(f.protected and f.state in ALIVE for f in flows):
            raise invalid("Could not shut down one or more job flows since they are termination protected.")
        for f in flows:
            self.runner.terminate(f)
        return {}

    def SetTerminationProtection(self, p: dict, cloud: str) -> dict:
        flows = [self.flow(i, cloud, "ValidationException") for i in required(p, "JobFlowIds")]
        if "TerminationProtected" not in p:
            required(p, "TerminationProtected")
        for f in flows:
            f.protected = bool(p["TerminationProtected"])
        return {}

    # shapes -------------------------------------------------------------------------------
    def _arn(self, f: Flow) -> str:
        region = self.runner.clouds.entries[f.cloud]["region"]
        return f"arn:aws:elasticmapreduce:{region}:000000000000:cluster/{f.id}"

    def _created(self, p: dict, cloud: str) -> list[Flow]:
        after, before = p.get("CreatedAfter"), p.get("CreatedBefore")
        return sorted((f for f in self.runner.flows.values() if f.cloud == cloud
                       and (after is None or f.created >= float(after)) and (before is None or f.created <= float(before))),
                      key=lambda f: -f.created)

    @staticmethod
    def _page(p: dict, items: list, name: str) -> dict:
        start = int(p.get("Marker") or 0)
        out = {name: items[start:start + PAGE]}
        if start + PAGE < len(items):
            out["Marker"] = str(start + PAGE)
        return out

    @staticmethod
    def _times(**kw) -> dict:
        return {k: v for k, v in kw.items() if v is not None}

    def _status(self, f: Flow) -> dict:
        out = {"State": f.state, "Timeline": self._times(CreationDateTime=f.created, ReadyDateTime=f.ready,
                                                         EndDateTime=f.ended)}
        if f.reason_code:
            out["StateChangeReason"] = {"Code": f.reason_code, "Message": f.reason}
        return out

    def _summary(self, f: Flow) -> dict:
        return {"Id": f.id, "Name": f.name, "Status": self._status(f), "NormalizedInstanceHours": self._hours(f),
                "ClusterArn": self._arn(f)}

    @staticmethod
    def _hours(f: Flow) -> int:
        now = time.time()
        return sum(int(((i.ended or now) - i.created) // 3600) + 1 for i in f.instances)

    def _cluster(self, f: Flow) -> dict:
        m = f.master
        return {**self._summary(f), "Ec2InstanceAttributes": {"Ec2AvailabilityZone": f.cloud, "Ec2KeyName": f.key_name},
                "InstanceCollectionType": "INSTANCE_GROUP", "LogUri": f.log_uri, "ReleaseLabel": f.release_label,
                "AutoTerminate": not f.keep_alive, "TerminationProtected": f.protected, "VisibleToAllUsers": True,
                "Applications": f.applications, "Tags": f.tags, "MasterPublicDnsName": m.address if m else "",
                "StepConcurrencyLevel": 1}

    def _jf_state(self, f: Flow) -> str:
        if f.state == "TERMINATED" and f.reason_code == "ALL_STEPS_COMPLETED":
            return "COMPLETED"
        return JOB_FLOW_STATE.get(f.state, f.state)

    def _job_flow(self, f: Flow) -> dict:
        master = next(g for g in f.groups if g.role == "MASTER")
        core = next((g for g in f.groups if g.role == "CORE"), master)
        status = {"State": self._jf_state(f), **self._times(CreationDateTime=f.created, StartDateTime=f.started,
                                                           ReadyDateTime=f.ready, EndDateTime=f.ended)}
        if f.reason:
            status["LastStateChangeReason"] = f.reason
        m = f.master
        return {"JobFlowId": f.id, "Name": f.name, "LogUri": f.log_uri, "AmiVersion": f.release_label,
                "ExecutionStatusDetail": status, "VisibleToAllUsers": True,
                "Instances": {"MasterInstanceType": master.type, "SlaveInstanceType": core.type,
                              "InstanceCount": sum(len(f.members(g)) for g in f.groups),
                              "MasterInstanceId": m.ec2_id if m else "", "MasterPublicDnsName": m.address if m else "",
                              "InstanceGroups": [self._group_detail(f, g) for g in f.groups],
                              "NormalizedInstanceHours": self._hours(f), "Placement": {"AvailabilityZone": f.cloud},
                              "KeepJobFlowAliveWhenNoSteps": f.keep_alive, "TerminationProtected": f.protected,
                              "HadoopVersion": APPLICATIONS["hadoop"]["Version"]},
                "Steps": [{"StepConfig": self._step_config(s), "ExecutionStatusDetail": {
                    "State": "PENDING" if s.state == "CANCEL_PENDING" else s.state,
                    **self._times(CreationDateTime=s.created, StartDateTime=s.started, EndDateTime=s.ended),
                    **({"LastStateChangeReason": s.failure} if s.failure else {})}} for s in f.steps],
                "BootstrapActions": [{"BootstrapActionConfig": {"Name": n, "ScriptBootstrapAction": {
                    "Path": path, "Args": args}}} for n, path, args in f.bootstrap]}

    @staticmethod
    def _step_config(s: Step) -> dict:
        return {"Name": s.name, "ActionOnFailure": s.action,
                "HadoopJarStep": {"Jar": s.jar, "Args": s.args, **({"MainClass": s.main_class} if s.main_class else {}),
                                  "Properties": [{"Key": k, "Value": v} for k, v in s.properties.items()]}}

    def _step(self, s: Step) -> dict:
        status = {"State": s.state, "StateChangeReason": {},
                  "Timeline": self._times(CreationDateTime=s.created, StartDateTime=s.started, EndDateTime=s.ended)}
        if s.failure:
            status["FailureDetails"] = {"Reason": "Step failed", "Message": s.failure}
        return {"Id": s.id, "Name": s.name, "ActionOnFailure": s.action, "Status": status,
                "Config": {"Jar": s.jar, "Args": s.args, "Properties": s.properties,
                           **({"MainClass": s.main_class} if s.main_class else {})}}

    def _group_detail(self, f: Flow, g: Group) -> dict:
        return {"InstanceGroupId": g.id, "Name": g.name, "Market": "ON_DEMAND", "InstanceRole": g.role,
                "InstanceType": self._type_name(f, g), "InstanceRequestCount": g.requested,
                "InstanceRunningCount": sum(1 for i in f.members(g) if i.state == "RUNNING"), "State": g.state,
                **self._times(CreationDateTime=g.created, ReadyDateTime=g.ready, EndDateTime=g.ended)}

    @staticmethod
    def _type_name(f: Flow, g: Group) -> str:
        return g.type if g.cloud == f.cloud else f"{g.type}@{g.cloud}"

    def _group(self, f: Flow, g: Group) -> dict:
        status = {"State": g.state, "Timeline": self._times(CreationDateTime=g.created, ReadyDateTime=g.ready,
                                                            EndDateTime=g.ended)}
        if g.reason:
            status["StateChangeReason"] = {"Code": "INSTANCE_FAILURE", "Message": g.reason}
        return {"Id": g.id, "Name": g.name, "Market": "ON_DEMAND", "InstanceGroupType": g.role,
                "InstanceType": self._type_name(f, g), "RequestedInstanceCount": g.requested,
                "RunningInstanceCount": sum(1 for i in f.members(g) if i.state == "RUNNING"), "Status": status}

    def _instance(self, i) -> dict:
        status = {"State": i.state, "Timeline": self._times(CreationDateTime=i.created, ReadyDateTime=i.ready,
                                                            EndDateTime=i.ended)}
        return {"Id": i.id, "Ec2InstanceId": i.ec2_id, "PrivateIpAddress": i.address, "PublicIpAddress": i.address,
                "PrivateDnsName": i.address, "PublicDnsName": i.address, "InstanceGroupId": i.group,
                "Market": "ON_DEMAND", "Status": status}
