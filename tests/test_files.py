"""Files rewritten whole, and directories only their owner could have filled: a writer killed
mid-write, a work directory or a key directory made by another user, a planted journal line."""
import os

import pytest

from g5kdeploy import work_dir
from g5kdeploy.errors import UserError
from g5kdeploy.files import check_private, private_dir, write_atomic

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
NOBODY = 65534


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sudoers"
    target.write_text("old\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)            # the data is written, not yet on disk
        with pytest.raises(OSError, match="No space"):
            write_atomic(target, "half of the new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["sudoers"]
    write_atomic(target, "new\n", 0o440)
    assert target.read_text() == "new\n" and target.stat().st_mode & 0o777 == 0o440
    assert [p.name for p in tmp_path.iterdir()] == ["sudoers"]


def test_private_dirs_are_closed_and_others_refused(tmp_path):
    mine = tmp_path / "home"
    mine.mkdir(mode=0o755)
    assert private_dir(mine).stat().st_mode & 0o777 == 0o700          # ours, left open: closed
    assert private_dir(tmp_path / "new").stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(PermissionError, match="mode 0700"):
        check_private(link)


@root_only
def test_a_work_directory_made_by_another_user_is_refused(tmp_path):
    planted = tmp_path / "g5kdeploy"
    (planted / "keys").mkdir(parents=True)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UserError, match="work directory: .* owned by uid 0, mode 0700 \\(it is uid 65534"):
        work_dir(planted)
    assert planted.stat().st_uid == NOBODY                            # refused, not taken over


@root_only
def test_a_planted_journal_line_deletes_nothing_of_ours(tmp_path):
    from g5kdeploy.testbed.local import _undo
    victim = tmp_path / "root-owned"
    victim.write_text("precious")
    _undo({"kind": "file", "path": str(victim)})
    assert victim.read_text() == "precious"


def test_a_point_is_marked_done_only_once_its_rows_are_on_disk(tmp_path, monkeypatch):
    from g5kdeploy.results import Run
    run = Run("x", {}, root=tmp_path)
    order = []
    fsync, write = os.fsync, os.write

    def on_disk(fd):
        order.append(("fsync", os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]))
        fsync(fd)

    def written(fd, data):
        order.append(("write", os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]))
        return write(fd, data)
    monkeypatch.setattr(os, "fsync", on_disk)
    monkeypatch.setattr(os, "write", written)
    run.point = "p1"
    run.row(value=1)
    run.mark("p1", "done")
    assert order.index(("fsync", "rows.jsonl")) < order.index(("write", "done.jsonl"))
