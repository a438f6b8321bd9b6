"""g5kdeploy tasks: `invoke --list`. The local testbed tasks need root."""
from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from invoke import Exit, task

from g5kdeploy.errors import UserError

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
TESTBED = os.environ.get("G5KDEPLOY_TESTBED", "local")    # set inside batch jobs by `invoke submit`
RESUMABLE = 75    # exit code of a run stopped by the walltime guard (EX_TEMPFAIL): resume it


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def user_errors(fn):
    """A UserError ends the task with its one-line message, no traceback. SIGTERM (oardel,
    the end of a batch job's walltime, kill) interrupts like Ctrl-C: cleanups run. A run
    the walltime guard stopped exits with RESUMABLE."""
    from g5kdeploy.engine import WalltimeReached

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise Exit(f"error: {e}", code=2) from None
        except WalltimeReached as e:
            raise Exit(f"{e}: the rows so far are saved; go on in a new reservation with "
                       f"--resume {e.run_id}", code=RESUMABLE) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
    return wrapper


@task(help={"description": "TOML testbed description (default: the embedded 2-site testbed; sky.toml: "
                           "Grid'5000 and FutureGrid)",
            "guests": "Debian guest images of the FutureGrid clouds (comma-separated; '' for none)"})
@user_errors
def testbed_up(c, description=None, guests="debian-blast"):
    """Bring up the local testbed: namespaces, sshd, shaped links, OAR; and the FutureGrid
    sites' clouds, if it has some."""
    from g5kdeploy import engine
    from g5kdeploy.nimbus.deploy import CLOUDS, kept
    from g5kdeploy.testbed import description as d
    from g5kdeploy.testbed.local import LocalTestbed, is_up
    from g5kdeploy.testbed.local.system import require_root
    t0 = time.monotonic()
    require_root()
    try:
        was_up = is_up() and LocalTestbed.attach(check=False).healthy()
    except UserError:
        was_up = False
    tb = LocalTestbed.up(d.load(description))
    print(f"testbed {tb.description.name} up in {time.monotonic() - t0:.1f} s: {tb.nodes()}")
    futuregrid = tb.description.futuregrid()
    # a testbed built now has none of the clouds a clouds file may still name
    if missing := [s for s in futuregrid if not was_up or s not in kept(CLOUDS)]:
        engine.execute(engine.load_experiment("deploy-nimbus"), tb, {"sites": missing, "futuregrid": True,
                                                                     "guests": guests, "vmm_memory_mb": 2048})
    for s in futuregrid:
        print(f"FutureGrid cloud {s}: EC2 {kept(CLOUDS)[s]['endpoint']} (aws --profile {s}; credentials: {CLOUDS})")
    print("try: ssh paradent-1.rennes hostname; oarnodes -l")


@task
@user_errors
def testbed_destroy(c):
    """Remove everything the local testbed created (also after a crash)."""
    from g5kdeploy.nimbus.deploy import AWS_CONFIG, CLOUDS
    from g5kdeploy.testbed.local import destroy, leftovers
    problems = destroy()
    CLOUDS.unlink(missing_ok=True)      # the clouds lived on the testbed's nodes
    CLOUDS.with_name(AWS_CONFIG.name).unlink(missing_ok=True)
    left = leftovers()
    if problems or left:
        raise Exit("testbed-destroy incomplete: " + "; ".join(problems + left), code=1)
    print("testbed destroyed")


@task
@user_errors
def testbed_status(c):
    """Is the local testbed up? Its nodes, rates, OAR jobs, and anything left over."""
    from g5kdeploy.testbed.local import DEFAULT_HOME, LocalTestbed, leftovers
    try:
        tb = LocalTestbed.attach(DEFAULT_HOME)
    except UserError as e:
        print(e)
        left = leftovers()
        print("leftovers: " + ("; ".join(left) if left else "none"))
        return
    print(f"up: {tb.nodes()}")
    print(f"rates (bit/s): {json.dumps(tb.rates())}")
    print(f"OAR jobs: {', '.join(tb.scheduler.jobs()) or 'none'}")


@task(help={"seconds": "length of each iperf3 flow"})
@user_errors
def testbed_validate(c, seconds=3):
    """Measure intra- and inter-site throughput beside the configured rates."""
    from g5kdeploy.remote import probe
    from g5kdeploy.testbed import NodeSet, open as open_testbed
    tb = open_testbed("local")
    nodes = NodeSet(n for site in tb.nodes().by_site().values() for n in site[:2])
    for r in (probe.throughput_row(tb, *path, float(seconds)) for path in probe.paths(nodes)):
        ratio = r["throughput_mbit_s"] / r["configured_mbit_s"]
        print(f"{r['scope']:5} {r['src']:>32} -> {r['dst']:<32} {r['throughput_mbit_s']:8.1f} Mbit/s "
              f"configured {r['configured_mbit_s']:6.0f}  ({ratio:.0%})")


@task(help={"name": "experiment name (a file in experiments/)",
            "param": "set a parameter, key=value (JSON or text; repeatable; full=true: the full grid)",
            "resume": "run id of an earlier run to go on with (its sweep's points done are kept)",
            "testbed": "local (embedded, brought up if needed) or g5k",
            "list_params": "print the experiment's parameters, their types and defaults"}, iterable=["param"])
@user_errors
def experiment(c, name, param=None, resume=None, testbed=TESTBED, list_params=False):
    """Run an experiment into results/<name>/<run-id>/ (or go on with run --resume)."""
    from g5kdeploy import engine
    if name in ("list", "--help", "-h"):         # invoke hands a positional argument its --help
        for path in sorted((Path(__file__).parent / "experiments").glob("[!_]*.py")):
            exp = engine.load_experiment(path.stem)
            doc = (sys.modules[type(exp).__module__].__doc__ or '').splitlines()[0]
            print(f"{exp.name:14} {doc.split(': ', 1)[-1]}")
        print("parameters of one: invoke experiment NAME --list-params")
        return
    exp = engine.load_experiment(name)
    if list_params:
        print("\n".join(engine.describe(exp)))
        return
    overrides = _overrides(param)
    if not resume:                  # bad parameters: refused before the testbed is brought up
        engine.check(exp, _described(testbed), overrides)
    run = engine.execute(exp, _testbed(testbed), overrides, resume=resume)
    from g5kdeploy.results import load
    print("\n".join(exp.summary(load(run.dir))))
    print(f"results: {run.dir}")


def _overrides(params) -> dict:
    """--param key=value, the value read as JSON when it is JSON, else as text."""
    out = {}
    for p in params or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UserError(f"bad --param {p!r}: write key=value (see --list-params)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _sites(text: str) -> dict:
    """`rennes:4,nancy:2` -> {"rennes": 4, "nancy": 2}; `rennes:paradent=2,rennes:parapluie=1`
    -> {"rennes": {"paradent": 2, "parapluie": 1}}; `rennes:paradent-[1-2]` -> those hosts."""
    import re
    out: dict = {}
    for part in filter(None, re.split(r",(?![^\[]*\])", text)):     # commas inside [..] belong to hostlists
        site, _, want = (x.strip() for x in part.partition(":"))
        cluster, _, count = want.rpartition("=")
        if want.isdigit() and int(want) > 0 and site not in out:
            out[site] = int(want)
        elif cluster and count.isdigit() and int(count) > 0 and isinstance(out.get(site, {}), dict):
            out.setdefault(site, {})[cluster] = int(count)
        elif want and "=" not in want and site not in out:
            out[site] = want
        else:
            raise UserError(f"bad --sites entry {part!r}: write site:nodes, site:cluster=nodes or site:hostlist, "
                            "e.g. rennes:4,nancy:graphene=2")
    if not out:
        raise UserError("no --sites: write site:nodes, e.g. rennes:4,nancy:4")
    return out


@task(help={"task": "the invoke task to run inside the job, quoted, e.g. \"experiment shrinker\"",
            "sites": "nodes per site, e.g. rennes:4,nancy:4, per cluster (nancy:graphene=2) or by name "
                     "(rennes:paradent-[1-2]); the batch runs in the first site's job",
            "walltime": "H:MM or H:MM:SS", "name": "OAR job name (default: from the task)",
            "testbed": "local (embedded) or g5k"})
@user_errors
def submit(c, task, sites, walltime="1:00", name=None, testbed=TESTBED):
    """Submit an OAR batch job that runs an invoke task on the reserved nodes."""
    from g5kdeploy.testbed.model import parse_walltime
    request = _sites(sites)
    parse_walltime(walltime)
    _described(testbed).demands(request)       # bad input: refused even with no testbed up
    name = name or "batch-" + "-".join(task.split()[:2])
    tb = _testbed(testbed, bring_up=False)
    jobs = tb.submit(task, request, walltime, name)
    first = next(iter(request))
    from g5kdeploy.results import default_root
    out = tb.output_dir()
    print(f"OAR job {jobs[first]} on {first} runs `invoke {task}`" +
          "".join(f"; job {j} holds {s}'s nodes" for s, j in jobs.items() if s != first))
    print(f"stdout: {out}/OAR.{name}.{jobs[first]}.stdout  stderr: {out}/OAR.{name}.{jobs[first]}.stderr")
    print(f"run directory: {default_root().resolve()}/<experiment>/<run-id> (its last line of stdout)")
    print(f"follow it: oarstat -fj {jobs[first]}   end it: invoke release --name {name}")


@task(help={"name": "OAR job name (default: the enclosing batch job's)", "testbed": "local or g5k"})
@user_errors
def release(c, name=None, testbed=TESTBED):
    """End the live OAR jobs of that name (inside a batch job: all but itself)."""
    tb = _testbed(testbed, bring_up=False)
    ended = tb.release_named(name or _enclosing_name(tb))
    print(f"ended OAR jobs: {', '.join(f'{j.site}:{j.id}' for j in ended) or 'none'}")


@task(help={"name": "OAR job name (default: the enclosing batch job's)",
            "extend": "more walltime to ask for, H:MM or H:MM:SS", "testbed": "local or g5k"})
@user_errors
def walltime(c, name=None, extend=None, testbed=TESTBED):
    """Show when the live jobs of that name end; with --extend, ask OAR for more walltime."""
    from datetime import datetime
    from g5kdeploy.testbed.model import parse_walltime
    tb = _testbed(testbed, bring_up=False)
    name = name or _enclosing_name(tb)
    jobs = tb.live(name)
    if not jobs:
        raise UserError(f"no live OAR job named {name!r}: see oarstat")
    if extend:
        seconds = parse_walltime(extend)
        for j in jobs:
            tb.scheduler.extend(j.site, j.id, seconds)
        time.sleep(2)      # OAR grants it at its next scheduling pass
        jobs = [tb.scheduler.job(j.site, j.id) for j in jobs]
    for j in jobs:
        end = f"ends {datetime.fromtimestamp(j.end):%H:%M:%S}" if j.end else "not started"
        print(f"{j.site}:{j.id} {j.state} walltime {j.walltime_s} s, {end}")


@task(help={"name": "OAR job name (default: the enclosing batch job's)", "testbed": "local or g5k"})
@user_errors
def check(c, name=None, testbed=TESTBED):
    """Say which nodes of the live jobs of that name cannot be reached as root, and why."""
    from g5kdeploy import remote
    tb = _testbed(testbed, bring_up=False)
    name = name or _enclosing_name(tb)
    if not (hosts := sorted({h for j in tb.live(name) for h in j.hosts})):
        raise UserError(f"no live OAR job named {name!r} holds nodes: see oarstat")
    remote.reach(tb)
    why = remote.check(hosts, tb)
    for h in hosts:
        print(f"{h:40} {'unreachable: ' + why[h] if h in why else 'ok'}")
    if why:
        raise Exit(f"{len(why)} of {len(hosts)} nodes cannot be reached", code=1)


def _enclosing_name(tb) -> str:
    if not (inside := tb.enclosing()):
        raise UserError("give --name: not inside an OAR job")
    return inside.name


@task(help={"sites": "comma-separated sites, one cloud each", "vmms_per_site": "VMM nodes per cloud",
            "testbed": "local (embedded, brought up if needed) or g5k",
            "propagation": "default image propagation: scp, chain, qcow or chain+qcow",
            "image_size_mb": "size of the busybox guest disk (image tiny) registered in every cloud",
            "guests": "Debian guest images registered too (comma-separated: debian, debian-blast; '' for none)"})
@user_errors
def deploy_nimbus(c, sites="rennes,nancy", vmms_per_site=1, testbed="local", propagation="qcow", image_size_mb=32,
                  guests="debian"):
    """Reserve nodes, deploy them, configure one Nimbus-style cloud per site in parallel."""
    from g5kdeploy import engine
    from g5kdeploy.nimbus.deploy import AWS_CONFIG, CLOUDS, teardown
    exp = engine.load_experiment("deploy-nimbus")
    params = {"sites": sites, "vmms_per_site": vmms_per_site, "propagation": propagation,
              "image_size_mb": image_size_mb, "guests": guests}
    engine.check(exp, _described(testbed), params)     # bad input: an error before anything is done
    tb = _testbed(testbed)
    problems = teardown(CLOUDS, tb)     # a new deployment replaces the previous one
    if problems:
        print("previous clouds: " + "; ".join(problems))
    run = engine.execute(exp, tb, params)
    from g5kdeploy.results import load
    print("\n".join(exp.summary(load(run.dir))))
    for site, cloud in json.loads(CLOUDS.read_text()).items():
        print(f"{site:8} EC2 {cloud['endpoint']}  S3 {cloud['s3_endpoint']}  service {cloud['service']}  "
              f"VMMs {', '.join(cloud['vmms'])}")
    print(f"credentials: {CLOUDS}")
    print(f"AWS CLI: export AWS_CONFIG_FILE={AWS_CONFIG}; aws --profile {site} ec2 describe-images  "
          f"(one profile per cloud: {', '.join(json.loads(CLOUDS.read_text()))})")
    print(f"results: {run.dir}")


@task
@user_errors
def nimbus_destroy(c, testbed="local"):
    """Terminate the clouds' guests and end their OAR jobs."""
    from g5kdeploy.nimbus.deploy import CLOUDS, teardown
    problems = teardown(CLOUDS, _testbed(testbed, bring_up=False))
    if problems:
        raise Exit("nimbus-destroy: " + "; ".join(problems), code=1)
    print("clouds destroyed")


@task(help={"name": "the cloud's name (its AWS CLI profile)", "endpoint": "its EC2 API (http://host:port)",
            "access_key": "credentials", "secret_key": "credentials", "region": "its region (default: the name)",
            "s3_endpoint": "its S3 endpoint, if it has one"})
@user_errors
def cloud_add(c, name, endpoint, access_key, secret_key, region=None, s3_endpoint=None):
    """Add an EC2-compatible cloud we did not deploy to the clouds file (checked with a signed
    DescribeImages); deploy-nimbus and nimbus-destroy leave it as it is."""
    from g5kdeploy.nimbus.deploy import AWS_CONFIG, CLOUDS, add_external
    add_external(CLOUDS, name, endpoint, access_key, secret_key, region or name, s3_endpoint)
    print(f"cloud {name}: EC2 {endpoint}{f'  S3 {s3_endpoint}' if s3_endpoint else ''} "
          f"(AWS_CONFIG_FILE={AWS_CONFIG} aws --profile {name} ...)")


@task
@user_errors
def cloud_remove(c, name):
    """Forget a cloud cloud-add added (the cloud itself is not touched)."""
    from g5kdeploy.nimbus.deploy import CLOUDS, remove_external
    remove_external(CLOUDS, name)
    print(f"cloud {name} removed from {CLOUDS}")


@task(help={"port": "the EMR endpoint's port", "host": "the address it listens on (loopback by default)",
            "testbed": "local or g5k (where the clouds' nodes are)"})
@user_errors
def resilin_up(c, port=8777, host="127.0.0.1", testbed="local"):
    """Start Resilin's EMR endpoint for the clouds up (deploy-nimbus first); print it and the AWS CLI profiles."""
    from g5kdeploy.nimbus.deploy import AWS_CONFIG, CLOUDS, write_aws_config
    from g5kdeploy.resilin import service
    info = service.start(CLOUDS, int(port), host, testbed)
    clouds = json.loads(CLOUDS.read_text())
    write_aws_config(AWS_CONFIG, clouds, {"emr": info["endpoint"]})
    site = next(iter(clouds))
    print(f"Resilin: EMR {info['endpoint']} (pid {info['pid']}, log {info['log']}), for the clouds "
          f"{', '.join(clouds)}; sign with a cloud's credentials: its profile")
    print(f"AWS CLI: export AWS_CONFIG_FILE={AWS_CONFIG}; aws --profile {site} emr list-clusters")


@task
@user_errors
def resilin_endpoint(c):
    """Print Resilin's EMR endpoint, if it is up."""
    from g5kdeploy.resilin import service
    info = service.running()
    if info is None:
        raise Exit("Resilin is not running: invoke resilin-up", code=1)
    print(info["endpoint"])


@task(help={"testbed": "local or g5k (where the clouds' nodes are)"})
@user_errors
def resilin_down(c, testbed="local"):
    """Stop Resilin's endpoint; every job flow still alive is terminated first (or, if it was
    killed, what it left)."""
    from g5kdeploy.nimbus.deploy import AWS_CONFIG, CLOUDS, write_aws_config
    from g5kdeploy.resilin import service
    stopped = service.stop()
    if CLOUDS.exists():
        write_aws_config(AWS_CONFIG, json.loads(CLOUDS.read_text()))
    if stopped:
        print("Resilin stopped")
    elif CLOUDS.exists() and (n := service.reap(CLOUDS, testbed)):
        print(f"Resilin was not running: {n} instance(s) a killed run left terminated")
    else:
        print("Resilin was not running")


@task(help={"sites": "the sites to join (default: all of the testbed's)",
            "dataplane": "kernel (VXLAN, the default) or user (a user-level router, as the original ViNe)",
            "migration": "live-migration support: detect migrated guests, reroute their traffic (thesis ch. 5)"})
@user_errors
def vine_up(c, sites=None, dataplane="kernel", migration=False):
    """Start ViNe: a VR on each site's gateway; every host of a site reaches the others'
    by private address, through firewalls and NAT (--migration: guests that migrate between
    sites keep their address and connections)."""
    from g5kdeploy.vine.overlay import Overlay
    t0 = time.monotonic()
    o = Overlay(_testbed("local"), sites.split(",") if sites else None, dataplane=dataplane,
                migration=migration).start()
    print(f"ViNe up in {time.monotonic() - t0:.1f} s: " +
          "; ".join(f"VR {s} at {o.tb.gateway(s)[0]} serves {', '.join(o.lndt[s])}" for s in o.sites))
    print(f"hosts may also be configured on {o.one_subnet()}, one subnet spanning the sites (the VRs answer ARP "
          "for the other sites' parts; with --migration, a guest that moved then talks to its new neighbours directly)")


@task
@user_errors
def vine_show(c):
    """Print each VR's LNDT and GNDT."""
    from g5kdeploy.vine.overlay import Overlay
    o = Overlay.attach(_testbed("local", bring_up=False))
    for s in o.sites:
        shown = o.ask(s, "show")
        print(f"VR {s}: LNDT {', '.join(shown['lndt']) or '-'}; GNDT " +
              ", ".join(f"{n} -> {vr}" for n, vr in sorted(shown["gndt"].items())))


@task
@user_errors
def vine_down(c):
    """Stop ViNe's routers; nothing of the overlay is left."""
    from g5kdeploy.vine.overlay import Overlay
    Overlay.attach(_testbed("local", bring_up=False)).stop()
    print("ViNe stopped")


def _described(kind: str):
    """The testbed a command will use, to check a request against (the local one need not be up)."""
    if kind != "local":
        return _testbed(kind, bring_up=False)
    from g5kdeploy.testbed import description
    from g5kdeploy.testbed.local import LocalTestbed, is_up
    return LocalTestbed.attach() if is_up() else LocalTestbed(description.load())


def _testbed(kind: str, bring_up: bool = True):
    """The testbed of that kind; the local one is brought up first when needed."""
    from g5kdeploy.testbed import open as open_testbed
    if kind == "local" and bring_up:
        from g5kdeploy.testbed.local import LocalTestbed
        return LocalTestbed.running()
    return open_testbed(kind)


@task(help={"run_dir": "a run directory, e.g. results/testbed-check/<run-id>"})
@user_errors
def report(c, run_dir):
    """Redraw a run's figures from its rows."""
    from pathlib import Path
    from g5kdeploy import engine
    from g5kdeploy.results import load
    meta = Path(run_dir) / "params.json"
    if not meta.exists():
        raise UserError(f"{run_dir} is not a run directory (no params.json)")
    exp = engine.load_experiment(json.loads(meta.read_text())["experiment"])
    print("\n".join(exp.summary(load(run_dir))))
    for path in engine.redraw(exp, run_dir):
        print(f"figure: {path}")


@task(help={"unit": "only the tests that need no root and no testbed", "k": "pytest -k expression"})
def test(c, unit=False, k=None):
    """Run the test suite (tests marked `testbed` build a small local testbed, as root)."""
    from g5kdeploy.testbed.local import destroy, is_up
    if not unit and is_up():
        print("test: the testbed tests need this machine's one local testbed: destroying the one that is up")
        destroy()
    args = [sys.executable, "-m", "pytest", "tests"]
    if unit:
        args += ["-m", "not testbed"]
    if k:
        args += ["-k", k]
    result = c.run(shlex.join(args), pty=False, warn=True)
    if result.exited == 5:
        raise Exit("error: pytest collected no test", code=5)
    if result.exited:
        raise Exit(code=result.exited)


def _benchmarks() -> dict[str, str]:
    """Benchmark name -> its first docstring line (every benchmarks/*.py but the shared helper)."""
    import ast
    return {p.stem.replace("_", "-"): (ast.get_docstring(ast.parse(p.read_text())) or "").split("\n")[0]
            for p in sorted((Path(__file__).parent / "benchmarks").glob("*.py")) if p.stem != "common"}


@task(help={"name": "the benchmark (`list`: each with what it measures): " + ", ".join(_benchmarks())})
@user_errors
def benchmark(c, name):
    """Run a benchmark (prints ratios measured side by side in one run)."""
    known = _benchmarks()
    if name in ("list", "--help", "-h"):       # invoke hands a positional argument its --help
        print("\n".join(f"{n:14} {doc}" for n, doc in known.items()))
        return
    if name not in known:
        raise UserError(f"no benchmark {name!r}: use one of {', '.join(known)}")
    c.run(shlex.join([sys.executable, "-m", f"benchmarks.{name.replace('-', '_')}"]))
