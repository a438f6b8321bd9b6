"""Files that are rewritten, and directories that hold secrets: written whole or not at all
(temporary file, fsync, rename), and refused when someone else could have put them there.
Standard library only: it runs on nodes too."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: readers see the old file or the new one, never a part, and
    a kill mid-write leaves the old one. A path that is a mount point (a bind-mounted
    /etc/hosts in a container) cannot be renamed over: it is rewritten in place."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            path.write_bytes(raw)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_private(path: str | Path) -> Path:
    """`path`, if it is a directory of this user's alone (not a link, mode 0700 or stricter)."""
    path = Path(path)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must be a directory owned by uid {os.geteuid()}, mode 0700 "
                              f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): remove it or use another")
    return path


def private_dir(path: str | Path) -> Path:
    """A directory of this user's alone, made if missing; one of ours left open is closed, one
    that is not ours refused (someone could have planted keys or journal lines in it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(path, 0o700)
    return check_private(path)
