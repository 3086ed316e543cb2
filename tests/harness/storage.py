"""A small real file system for storage-fault tests (docs/testing.md).

A file system of a few MB, mounted for one test: the test fills it to the last
byte, frees it, and remounts it read-only and back, so the station meets the
kernel's own ENOSPC and EROFS, not a mock of them.

    disk = SmallDisk(tmp_path / "card", size_mb=24).start()
    disk.fill()          # ENOSPC from here on
    disk.free()
    disk.read_only()     # EROFS from here on (nothing may be open for writing)
    disk.read_write()
    disk.stop()

``SmallDisk(..., ext4=True)`` is an ext4 image on a loop device mounted with
``errors=remount-ro``, as a Pi's root is: :meth:`SmallDisk.fs_error` makes the
kernel report a file-system error, and ext4 remounts itself read-only under the
running station (writes then fail with EIO), which only :meth:`SmallDisk.repair`
(unmount, fsck, mount: a reboot) undoes.

Mounting needs root with CAP_SYS_ADMIN (the project's test container has it);
:func:`can_mount` says whether this machine allows it, once; tests call
:func:`require_mount`, which skips without it (fails under CI).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SmallDisk", "can_mount", "require_mount"]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@functools.lru_cache(maxsize=1)
def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN)."""
    probe = tempfile.mkdtemp(prefix="yizhan-mount-probe-")
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", probe)
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            subprocess.run(["umount", probe], check=True, capture_output=True, timeout=10)
        with contextlib.suppress(OSError):
            os.rmdir(probe)
    return True


def _ext4_tools() -> bool:
    return all(shutil.which(t) for t in ("mkfs.ext4", "e2fsck", "findmnt")) and \
        Path("/dev/loop-control").exists()


def require_mount(ext4: bool = False) -> None:
    """Skip the calling test when this machine cannot mount (``ext4``: an image on
    a loop device), saying so; under CI (env ``CI`` set) fail instead, so that
    the test is never passed unseen."""
    import pytest

    if can_mount() and (not ext4 or _ext4_tools()):
        return
    reason = "needs a real small file system: mount (root with CAP_SYS_ADMIN)"
    if ext4:
        reason += ", loop devices, mkfs.ext4, e2fsck and findmnt"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} is required under CI", pytrace=False)
    pytest.skip(reason)


class SmallDisk:
    """A tmpfs of ``size_mb`` mounted at ``path``; ``filler`` is the file that fills it."""

    def __init__(self, path: Path, size_mb: int = 24, *, ext4: bool = False) -> None:
        self.path = Path(path)
        self.size_mb = size_mb
        self.ext4 = ext4
        self.image = self.path.with_name(self.path.name + ".img")
        self.filler = self.path / ".filler"
        self.mounted = False

    def start(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.ext4:
            with open(self.image, "wb") as f:
                f.truncate(self.size_mb << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True,
                           capture_output=True, timeout=60)
            self._mount_image()
        else:
            _mount("-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs",
                   str(self.path))
        self.mounted = True
        return self

    def _mount_image(self) -> None:
        _mount("-o", "loop,errors=remount-ro", str(self.image), str(self.path))

    def fs_error(self) -> None:
        """ext4 only: a file-system error, as a failing card gives; the kernel
        remounts the file system read-only at once."""
        device = subprocess.run(["findmnt", "-no", "SOURCE", str(self.path)], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("1\n")

    def repair(self) -> None:
        """ext4 only: what a reboot does: unmount, fsck, mount read-write again."""
        subprocess.run(["umount", str(self.path)], check=True, capture_output=True, timeout=10)
        # e2fsck exits 1 when it fixed something: that is the point.
        subprocess.run(["e2fsck", "-fy", str(self.image)], check=False, capture_output=True,
                       timeout=60)
        self._mount_image()

    def fill(self) -> None:
        """Write the filler until the file system has not one byte left."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
                chunk = b"\0" * size
                try:
                    while True:
                        os.write(fd, chunk)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def free(self) -> None:
        """Delete the filler: the space is back."""
        self.filler.unlink(missing_ok=True)

    def read_only(self) -> None:
        _mount("-o", "remount,ro", str(self.path))

    def read_write(self) -> None:
        _mount("-o", "remount,rw", str(self.path))

    def stop(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        # Lazy: a thread of a failed test may still hold a file open in it.
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True,
                       timeout=10)
