"""Class-data-sharing archives (CDS) of a JVM application: the classes it loads, parsed and
verified once and mapped by every JVM that starts it. An archive is valid only for the JVM
build that dumped it and the exact jars of its class path, so it is dumped by each JVM that
will map it from a portable list of class names. Layout, in an application's tree:
NAME-classes.lst (the names), NAME-classpath.jar (its jars in a fixed order, as a manifest's
Class-Path: the one class path the archive is checked against), NAME.jsa (the archive).
Standard library only: it runs on nodes too."""
from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

JAVA = "java"


def dump_command(name: str, into: str | None = None) -> list[str]:
    """The command that dumps NAME.jsa (or `into`) from NAME-classes.lst (NAME: a path
    without suffix)."""
    return [JAVA, "-Xshare:dump", f"-XX:SharedClassListFile={name}-classes.lst",
            f"-XX:SharedArchiveFile={into or name + '.jsa'}", "-cp", f"{name}-classpath.jar"]


def usable(name: str) -> bool:
    """Does this JVM map NAME.jsa (same JVM build, same jars)?"""
    r = subprocess.run([JAVA, "-Xshare:on", f"-XX:SharedArchiveFile={name}.jsa", "-cp", f"{name}-classpath.jar",
                        "-version"], capture_output=True, text=True)
    return r.returncode == 0 and "sharing" in r.stderr


def lists(tree: Path | str) -> list[str]:
    """The archives (NAME, without suffix) whose class list a tree carries."""
    return [str(p)[:-len("-classes.lst")] for p in sorted(Path(tree).glob("*-classes.lst"))]


def manifest(jars: list[str]) -> str:
    """A manifest whose Class-Path lists `jars` (paths relative to it), lines folded at 72 bytes."""
    line, lines = "Class-Path: " + " ".join(jars), []
    while line:
        width = 71 if lines else 72
        lines.append((" " if lines else "") + line[:width])
        line = line[width:]
    return "Manifest-Version: 1.0\r\n" + "\r\n".join(lines) + "\r\n\r\n"


def write_classpath_jar(name: str, jars: list[str]) -> None:
    """NAME-classpath.jar listing `jars` (relative to its directory); left alone when it says
    the same already (an archive checks its time stamp)."""
    target, text = Path(f"{name}-classpath.jar"), manifest(jars)
    if target.exists():
        with zipfile.ZipFile(target) as z:
            if z.read("META-INF/MANIFEST.MF").decode() == text:
                return
    part = target.with_suffix(".part")
    with zipfile.ZipFile(part, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", text)
    part.replace(target)
