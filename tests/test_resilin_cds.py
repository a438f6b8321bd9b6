"""Spark's JVMs start from their class-data-sharing archive (g5kdeploy.resilin.cds, made by
bootstrap.sh with this machine's JVM): the class-path jar's manifest, the archive refused
against another class path, and a master started by Resilin's node script mapping it."""
import subprocess
import time
from pathlib import Path

from g5kdeploy import jvm
from g5kdeploy.resilin import spark


def unfold(manifest: str) -> dict[str, str]:
    out, last = {}, None
    for line in manifest.split("\r\n"):
        if line.startswith(" "):
            out[last] += line[1:]
        elif line:
            last, _, value = line.partition(": ")
            out[last] = value
    return out


def test_the_manifest_lists_every_jar_in_order_in_lines_of_72_bytes():
    jars = [f"pyspark/jars/{'x' * k}-{k}.jar" for k in range(1, 90)]
    text = jvm.manifest(jars)
    assert text.endswith("\r\n\r\n") and all(len(line.encode()) <= 72 for line in text.split("\r\n"))
    assert unfold(text)["Class-Path"].split(" ") == jars


def test_this_jvm_maps_the_archive_and_refuses_it_against_another_class_path(tmp_path):
    assert jvm.usable(spark.CDS), "run ./bootstrap.sh (python -m g5kdeploy.resilin.cds)"
    other = tmp_path / "other"
    Path(f"{other}.jsa").symlink_to(f"{spark.CDS}.jsa")
    jvm.write_classpath_jar(str(other), ["nothing.jar"])
    assert not jvm.usable(str(other))


def test_a_master_started_by_the_node_script_maps_the_archive_and_runs_c1_when_emulated(tmp_path):
    where = tmp_path / "node"
    where.mkdir()
    (where / "spark.conf").write_text(spark.properties("s3cret", emulated=True))
    script = spark.node_script(str(where), "master", "127.0.0.1", "127.0.0.1", 7899, 1, [], emulated=True)
    try:
        r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        session = (where / "pid").read_text().strip()
        java = subprocess.run(["pgrep", "-s", session, "-x", "java"], capture_output=True, text=True).stdout.split()
        assert len(java) == 1
        assert f"{spark.CDS}.jsa" in Path(f"/proc/{java[0]}/maps").read_text()
        assert "-XX:TieredStopAtLevel=1" in Path(f"/proc/{java[0]}/cmdline").read_text().split("\0")
    finally:
        subprocess.run(["sh", "-c", spark.stop_script(str(where))], timeout=60)
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-s", session], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the master outlived stop_script"
        time.sleep(0.1)
