"""Place a recognised medium's kernel and initrd in the netboot tree.

Recognising the medium is :mod:`appliance.media` (re-exported here:
``detect``, ``Media``, ``MediaError``); this module writes.

* :func:`import_media` copies (or hard-links) the two files to
  ``<netboot_dir>/distros/<name>/`` under their original file names (Debian:
  ``linux``/``initrd.gz``, RHEL: ``vmlinuz``/``initrd.img``, casper:
  ``vmlinuz``/``initrd``), writes ``SHA256SUMS`` (``sha256sum -c`` format) and
  returns the :class:`~appliance.model.Distro`; the caller registers it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .media import NAME_RE, Media, MediaError, check_name, detect  # noqa: F401 - re-exported
from .model import Distro

log = logging.getLogger("plowshare.distro")

CHUNK = 1 << 20
SUMS = "SHA256SUMS"
_TMP = ".import-"

Progress = Callable[[int, int, str], None]
"""``progress(done_bytes, total_bytes, filename)``: totals span the whole import."""

# -- import ---------------------------------------------------------------------
def import_media(media: Media, netboot_dir: Path, name: str | None = None,
                 mode: str = "copy", progress: Progress | None = None) -> Distro:
    """Place ``media``'s kernel and initrd in ``netboot_dir/distros/<name>/``.

    ``mode="copy"`` copies in chunks; ``"link"`` makes a hard link (same inode:
    an in-place change to the source changes the served file) and falls back to
    a copy, with a warning, when the source is on another filesystem or linking
    is refused -- never a symlink, which the TFTP/HTTP servers refuse once it
    leaves the tree.  Each file goes to a temporary name in the target
    directory, is size checked and fsynced, and only then are all renamed into
    place back to back: a re-import of a name replaces each file atomically (a
    boot that fetched the old kernel may still get the new initrd: do not
    re-import a name installs are using).  Files of the previous import that
    are no longer part of it are removed; imports of one name are serialised
    by a lock on its directory.  Files are mode 0644.  Returns the Distro with
    absolute paths; registering it is the caller's job.
    """
    name = check_name(name if name is not None else media.suggested_name)
    if mode not in ("copy", "link"):
        raise ValueError(f"mode {mode!r}: use 'copy' or 'link'")
    target = Path(netboot_dir).resolve() / "distros" / name
    target.mkdir(parents=True, exist_ok=True)
    files = _target_names(media)
    sources = list(zip((media.kernel, media.initrd), files, strict=True))
    total = sum(src.stat().st_size for src, _ in sources)
    dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    staged: list[Path] = []
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        _remove_leftovers(target)
        sums, done = "", 0
        for src, dest in sources:
            tmp, digest, done = _stage(src, target, dest, mode, done, total, progress)
            staged.append(tmp)
            sums += f"{digest}  {dest}\n"
        staged.append(_write_temp(target, sums.encode()))
        stale = _listed(target / SUMS) - set(files)
        for tmp, dest in zip(staged, (*files, SUMS), strict=True):
            os.replace(tmp, target / dest)
        for old in sorted(stale):
            log.info("%s: removing %s from the previous import", target, old)
            (target / old).unlink(missing_ok=True)
        os.fsync(dir_fd)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        os.close(dir_fd)
    log.info("distro %s: %s of %s/%s from %s into %s", name, mode, *files, media.root, target)
    return Distro(name=name, kernel=str(target / files[0]), initrd=str(target / files[1]),
                  arch=media.arch, breed=media.breed)


def _target_names(media: Media) -> tuple[str, str]:
    """The sources' own file names, unless they collide with each other or our files."""
    names = (media.kernel.name, media.initrd.name)
    if names[0] == names[1] or SUMS in names or any(n.startswith(_TMP) for n in names):
        return ("kernel", "initrd")
    return names


def _stage(src: Path, target: Path, dest: str, mode: str, done: int, total: int,
           progress: Progress | None) -> tuple[Path, str, int]:
    """Put ``src`` at a temporary name in ``target``; return (temp, sha256, done)."""
    size = src.stat().st_size
    if mode == "link":
        tmp = target / f"{_TMP}{dest}-{os.urandom(6).hex()}"
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                                 errno.ENOTSUP):
                raise
            log.warning("%s: cannot hard-link into %s (%s); copying instead",
                        src, target, exc.strerror)
        else:
            digest = _sha256(src)
            if progress:
                progress(done + size, total, dest)
            return tmp, digest, done + size
    return _copy(src, target, dest, size, done, total, progress)


def _copy(src: Path, target: Path, dest: str, size: int, done: int, total: int,
          progress: Progress | None) -> tuple[Path, str, int]:
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP}{dest}-", dir=target)
    tmp, digest, copied = Path(tmp_name), hashlib.sha256(), 0
    try:
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            if progress:
                progress(done, total, dest)
            while chunk := fin.read(min(CHUNK, size + 1 - copied)):  # +1: notice growth
                fout.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                if progress:
                    progress(min(done + copied, total), total, dest)
            fout.flush()
            os.fchmod(fout.fileno(), 0o644)
            os.fsync(fout.fileno())
        if copied != size or tmp.stat().st_size != size:
            raise MediaError(f"{src}: copied {copied} bytes, expected {size} "
                             "(did the file change during the import?)")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), done + copied


def _write_temp(target: Path, data: bytes) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP, dir=target)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), 0o644)
        os.fsync(f.fileno())
    return Path(tmp_name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listed(sums: Path) -> set[str]:
    """Plain file names a previous import recorded in SHA256SUMS."""
    if not sums.is_file():
        return set()
    names = {line.partition("  ")[2].strip() for line in sums.read_text().splitlines()}
    return {n for n in names if NAME_RE.fullmatch(n) and n != SUMS}


def _remove_leftovers(target: Path) -> None:
    """Temporary files of an import that crashed (we hold the directory's lock)."""
    for leftover in target.glob(f"{_TMP}*"):
        log.info("%s: removing leftover %s", target, leftover.name)
        leftover.unlink(missing_ok=True)


# -- CLI progress -----------------------------------------------------------------
class _CliProgress:
    """A :data:`Progress` callback that is also a context manager (closes the bar)."""

    def __init__(self, stream) -> None:
        self.stream, self.bar, self.task, self.current = stream, None, None, None
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, done: int, total: int, filename: str) -> None:
        if self.tty:
            if self.bar is None:
                from rich import console
                from rich import progress as rp
                self.bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                                       rp.DownloadColumn(), rp.TransferSpeedColumn(),
                                       console=console.Console(file=self.stream))
                self.bar.start()
                self.task = self.bar.add_task(filename, total=total)
            self.bar.update(self.task, completed=done, total=total, description=filename)
        elif filename != self.current:
            print(f"importing {filename} ({done >> 20} of {total >> 20} MiB done)",
                  file=self.stream, flush=True)
        self.current = filename
        if done >= total:
            self.close()

    def close(self) -> None:
        """Stop the bar (idempotent); on a plain stream, say the import is complete."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif self.current is not None and not self.tty:
            print("import complete", file=self.stream, flush=True)
        self.current = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cli_progress(stream=None) -> _CliProgress:
    """A progress callback for the CLI: a rich bar on a TTY, else a line per file.

    Use as ``with cli_progress() as progress: import_media(..., progress=progress)``
    so an error mid-copy still stops the bar.  ``stream`` defaults to
    ``sys.stderr``, looked up at call time.
    """
    return _CliProgress(sys.stderr if stream is None else stream)
