"""Build the `tiny` guest image from Debian packages, nothing downloaded at run time but
them: an uncompressed kernel (PVH entry: faster boot), an initramfs that mounts the guest
disk (the Debian images of vm.debian boot on the same two), and an ext4 disk image of a
chosen size with busybox, the guest agent as init and a payload."""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import lzma
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from g5kdeploy import HOME, work_dir
from g5kdeploy.errors import UserError

KERNEL_PACKAGE = "linux-image-6.1.0-*-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# and what they depend on; 9p: a directory of the VMM shared read-only (Guest.share)
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4", "9p", "9pnet_virtio")
GUEST = resources.files(__package__).joinpath("guest")
CACHE = HOME / "cache"                                          # debs/ and images/
NAME = "tiny"                                                   # the id clouds register it under
FORMAT = 3                                                      # bump when the layout changes


class ImageError(UserError):
    """The image cannot be built as asked (one line that says what to do)."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path           # the Debian kernel, uncompressed (PVH entry: what QEMU boots)
    kernel_gz: Path        # the same, gzipped: what is shipped to VMMs (gunzip is 3x cheaper than xz)
    initrd: Path
    disk: Path
    size_mb: int

    def manifest(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}


def sh(*cmd, cwd=None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise ImageError(f"{' '.join(map(str, cmd))}: {p.stderr.strip()[-300:]}")
    return p.stdout


def _latest_kernel_package() -> str:
    names = sh("apt-cache", "search", "--names-only", "^" + KERNEL_PACKAGE.replace("*", "[0-9]+") + "$").split()
    names = sorted({n for n in names if n.startswith("linux-image-")}, key=lambda n: int(n.split("-")[3]))
    if not names:
        raise ImageError(f"no {KERNEL_PACKAGE} package known to apt: run apt-get update")
    return names[-1]


def boot_files(image: GuestImage, workdir: Path) -> dict[str, Path]:
    """What VMM nodes need to boot guests (the g5kdeploy::qemu recipe installs it):
    bundle file name -> path; SHA256SUMS is written into workdir."""
    sums = Path(workdir) / "SHA256SUMS"
    sums.write_text(sh("sha256sum", str(image.kernel_gz), str(image.initrd)))
    return {"boot/vmlinux.gz": image.kernel_gz, "boot/initrd.cpio.gz": image.initrd, "boot/SHA256SUMS": sums}


def fetch_packages(cache: Path) -> dict[str, Path]:
    """The kernel and busybox .debs, downloaded once with apt-get into cache/debs."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = {"kernel": sorted(debs.glob("linux-image-*.deb")), "busybox": sorted(debs.glob("busybox-static_*.deb"))}
    if not found["kernel"] or not found["busybox"]:
        sh("apt-get", "download", _latest_kernel_package(), BUSYBOX_PACKAGE, cwd=debs)
        return fetch_packages(cache)
    return {k: v[-1] for k, v in found.items()}


def vmlinux(vmlinuz: bytes) -> bytes:
    """The uncompressed kernel inside a bzImage (its xz payload)."""
    start = vmlinuz.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ImageError("no xz payload in the kernel image")
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(vmlinuz[start:])


def module_order(moddir: Path, wanted=MODULES) -> list[Path]:
    """Module files in load order (dependencies first), read from each .ko's modinfo."""
    files = {p.stem: p for p in moddir.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = files[name.replace("-", "_")] if name.replace("-", "_") in files else files[name]
        if path in order:
            return
        for field in path.read_bytes().split(b"\0"):
            if field.startswith(b"depends="):
                for dep in filter(None, field[8:].decode().split(",")):
                    visit(dep)
        order.append(path)

    for m in wanted:
        visit(m)
    return order


def _busybox_tree(root: Path, busybox: Path) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin/busybox")
    applets = sh(str(busybox), "--list").split()
    for a in applets:
        if a != "busybox" and not (root / "bin" / a).exists():
            (root / "bin" / a).symlink_to("busybox")
    for d in ("sbin", "usr/bin", "usr/sbin"):
        (root / d).parent.mkdir(parents=True, exist_ok=True)
        if not (root / d).exists():
            (root / d).symlink_to("/bin")
    for d in ("proc", "sys", "dev", "tmp", "run", "etc", "root", "newroot"):
        (root / d).mkdir(exist_ok=True)


def _cpio(root: Path, out: Path, busybox: Path) -> None:
    files = sh("find", ".", cwd=root)
    p = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], cwd=root, input=files.encode(),
                       capture_output=True)
    if p.returncode != 0:
        raise ImageError(f"cpio: {p.stderr.decode()[-300:]}")
    out.write_bytes(gzip.compress(p.stdout, 6))


def _fingerprint(debs: dict[str, Path], size_mb: int, payload: Path | None) -> str:
    h = hashlib.sha256(json.dumps([FORMAT, {k: v.name for k, v in debs.items()}, MODULES, size_mb]).encode())
    for f in sorted(p.name for p in GUEST.iterdir()):
        h.update(GUEST.joinpath(f).read_bytes())
    if payload:
        for f in sorted(Path(payload).rglob("*")) if Path(payload).is_dir() else [Path(payload)]:
            h.update(str(f).encode() + (f.read_bytes() if f.is_file() else b""))
    return h.hexdigest()[:16]


def check(size_mb: int, payload: Path | None = None) -> None:
    if size_mb < 16:
        raise ImageError(f"guest disk of {size_mb} MiB is too small: use at least 16")
    if payload is not None and not Path(payload).exists():
        raise ImageError(f"payload {payload} does not exist: give a file or a directory to put in the guest's /data")
    if payload is not None:
        files = [p for p in Path(payload).rglob("*") if p.is_file()] if Path(payload).is_dir() else [Path(payload)]
        need = sum(f.stat().st_size for f in files) / 2**20 + 8     # + busybox, agent, file system
        if need > size_mb:
            raise ImageError(f"payload {payload} needs a disk of about {need:.0f} MiB: raise the image size "
                             f"(now {size_mb} MiB)")


def random_payload(size_mb: int, seed: int = 0, cache: Path = CACHE) -> Path:
    """`size_mb` MiB of seeded pseudo-random bytes (incompressible, the same on every machine),
    made once in cache/payloads."""
    path = Path(cache) / "payloads" / f"random-{size_mb}M-{seed}.bin"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        part = path.with_name(path.name + f".{os.getpid()}")
        with open(part, "wb") as f:
            for _ in range(size_mb):
                f.write(rng.randbytes(1 << 20))
        part.replace(path)
    return path


def build(cache: Path = CACHE, size_mb: int = 32, payload: Path | None = None) -> GuestImage:
    """The guest image for these parameters (built once, then reused from cache/images)."""
    check(size_mb, payload)
    cache = Path(cache)
    if cache == CACHE:
        work_dir()              # what guests boot is cached here: root's alone
    debs = fetch_packages(cache)
    out = cache / "images" / _fingerprint(debs, size_mb, payload)
    image = GuestImage(out / "vmlinux", out / "vmlinux.gz", out / "initrd.cpio.gz", out / "disk.img", size_mb)
    if (out / "manifest.json").exists():
        return image
    with tempfile.TemporaryDirectory(prefix="g5kdeploy-image-") as tmp:
        tmp = Path(tmp)
        for name, deb in debs.items():
            sh("dpkg-deb", "-x", str(deb), str(tmp / name))
        busybox = tmp / "busybox/bin/busybox"
        work = tmp / "out"
        work.mkdir()
        kernel = vmlinux(Path(glob.glob(str(tmp / "kernel/boot/vmlinuz-*"))[0]).read_bytes())
        (work / "vmlinux").write_bytes(kernel)
        (work / "vmlinux.gz").write_bytes(gzip.compress(kernel, 6, mtime=0))
        # initramfs: busybox, the modules, /init
        initramfs = tmp / "initramfs"
        _busybox_tree(initramfs, busybox)
        (initramfs / "modules").mkdir()
        order = module_order(Path(glob.glob(str(tmp / "kernel/lib/modules/*"))[0]))
        for ko in order:
            shutil.copy2(ko, initramfs / "modules" / ko.name)
        (initramfs / "modules.order").write_text("\n".join(ko.stem for ko in order) + "\n")
        for name, target in (("initramfs-init", "init"), ("workload", "workload")):
            (initramfs / target).write_bytes(GUEST.joinpath(name).read_bytes())
            (initramfs / target).chmod(0o755)
        sh("mknod", str(initramfs / "dev/console"), "c", "5", "1")
        _cpio(initramfs, work / "initrd.cpio.gz", busybox)
        # disk: busybox userland, the agent as /sbin/init (sbin -> bin), the payload in /data
        root = tmp / "root"
        _busybox_tree(root, busybox)
        os.unlink(root / "bin/init")
        (root / "bin/init").write_bytes(GUEST.joinpath("agent").read_bytes())
        (root / "bin/init").chmod(0o755)
        (root / "www").mkdir()
        if payload:
            src = Path(payload)
            dst = root / "data"
            shutil.copytree(src, dst) if src.is_dir() else (dst.mkdir(), shutil.copy2(src, dst / src.name))
        sh("mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "g5kguest", "-d", str(root),
            str(work / "disk.img"), f"{size_mb}M")
        (work / "manifest.json").write_text(json.dumps({**image.manifest(), "debs": {k: v.name for k, v in debs.items()}}))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(str(work), out)
    return image

