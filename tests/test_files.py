"""vssflow.files: durable atomic writes (fsync of the file and its directory), versioned directories, locks."""

import os
import signal
import subprocess
import sys

import pytest

from vssflow.errors import InputError
from vssflow.files import atomic_open, exclusive_lock, staged_directory


@pytest.fixture
def fs_events(monkeypatch):
    """The real os.fsync / os.replace, with each call recorded as (what, path)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_open_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, fs_events):
    target = tmp_path / "sub" / "out.json"
    with atomic_open(target) as f:
        f.write("{}")
    assert target.read_text() == "{}"
    (k0, tmp), *rest = fs_events
    assert k0 == "fsync" and tmp.startswith(str(tmp_path / "sub" / ".out.json.")), fs_events  # the temporary file
    assert rest == [("replace", str(target)), ("fsync", str(tmp_path / "sub"))]


def test_staged_directory_fsyncs_every_file_and_directory_before_the_switch(tmp_path, fs_events):
    target = tmp_path / "model"
    with staged_directory(target) as d:
        (d / "a.bin").write_bytes(b"a")
        (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(b"b")
    version = str(target.resolve())
    switch = fs_events.index(("replace", str(target)))
    before = {p for k, p in fs_events[:switch] if k == "fsync"}
    assert {version, f"{version}/a.bin", f"{version}/sub", f"{version}/sub/b.bin"} <= before
    assert ("fsync", str(tmp_path)) in fs_events[switch:]  # the new symlink's directory entry
    assert (target / "sub" / "b.bin").read_bytes() == b"b" and target.is_symlink()


def test_an_error_inside_staged_directory_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "model"
    with staged_directory(target) as d:
        (d / "x").write_text("old")
    with pytest.raises(RuntimeError), staged_directory(target) as d:
        (d / "x").write_text("new")
        raise RuntimeError("boom")
    assert (target / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", os.readlink(target), "model"]


HOLD = "import sys, time; from vssflow.files import exclusive_lock\nwith exclusive_lock(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(60)"  # fmt: skip


def test_a_held_lock_refuses_with_one_line_and_a_killed_holder_frees_it(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=r"in use by a test \(pid \d+ on ") as err:
            with exclusive_lock(lock, wait=False, what="a test"):
                pass
        assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with exclusive_lock(lock, wait=False):  # the kernel dropped the dead holder's lock: nothing stale to clean up
        pass
