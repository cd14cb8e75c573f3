"""Data sources for the TFTP server: random access by offset.

A windowed transfer (RFC 7440) resends a whole window from the last ACKed
block, so sessions re-read by offset (``pread_into(offset, buffer)``, which
fills the caller's send buffer without an intermediate ``bytes``) instead of
keeping packets.  Small regular files are shared between sessions from an
in-memory cache keyed by inode, size and times.  Pure: no sockets.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict

# Regular files up to CACHE_FILE_MAX bytes are read whole and shared between
# sessions (1,000 PXE clients asking for the same pxelinux.0 need one copy and
# no file descriptors); the cache holds at most CACHE_TOTAL_MAX bytes.
CACHE_FILE_MAX = 4 << 20
CACHE_TOTAL_MAX = 64 << 20


class _Source:
    """Random-access source; ``read`` is a sequential convenience on top."""

    size: int | None = None  # bytes on the wire; None when unknown (netascii)
    _pos = 0

    def pread_into(self, offset: int, buf) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.pread_into(self._pos, memoryview(buf))
        self._pos += got
        return bytes(buf[:got])

    def view(self) -> memoryview | None:
        """The whole content as a read-only buffer the session can send slices
        of directly (``sendmsg``), or ``None`` when only ``pread_into`` works."""
        return None

    def close(self) -> None:
        pass


class BytesSource(_Source):
    """Generated (or cached) content served from memory."""

    def __init__(self, data: bytes):
        self._data = data if isinstance(data, bytes) else bytes(data)
        self._view = memoryview(self._data)
        self.size = len(self._data)

    def pread_into(self, offset: int, buf) -> int:
        chunk = self._view[offset:offset + len(buf)]
        n = len(chunk)
        buf[:n] = chunk
        return n

    def view(self) -> memoryview:
        return self._view

    def close(self) -> None:
        self._view.release()


class FileSource(_Source):
    """A regular file: mapped read-only for ``sendmsg`` straight from the page
    cache (one syscall per block instead of ``preadv`` + ``send``), with
    ``os.preadv`` as the fallback.

    Field quirk: a file truncated in place while it is being served leaves
    the mapping pointing past EOF.  Python never reads the mapped bytes
    itself -- only the kernel does, inside ``sendmsg`` -- and a kernel copy
    from such a page fails with ``EFAULT`` (no ``SIGBUS``), which the session
    treats like a lost datagram until it gives up.  Replacing files by
    rename, as package managers and our installer do, is unaffected: the
    mapping keeps the old inode.
    """

    def __init__(self, fd: int, size: int):
        self._fd, self.size = fd, size
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None

    def pread_into(self, offset: int, buf) -> int:
        return os.preadv(self._fd, [buf], offset)

    def fileno(self) -> int:
        return self._fd

    def view(self) -> memoryview | None:
        if self._view is None and self.size and self._fd >= 0:
            try:
                self._map = mmap.mmap(self._fd, self.size, prot=mmap.PROT_READ)
            except (OSError, ValueError):  # e.g. a file system without mmap
                return None
            self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._view = memoryview(self._map)
        return self._view

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._map.close()
            self._view = self._map = None
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class NetasciiSource(_Source):
    """Wraps a source, converting LF -> CR LF and CR -> CR NUL (RFC 764).

    The expanded stream has no fixed offset mapping, so it is produced
    sequentially into a buffer that keeps the last ``keep`` bytes below the
    highest offset asked for: enough to resend a whole window (the session
    never asks for anything older).  The mapping is byte-local, so chunk
    boundaries need no state.
    """

    CHUNK = 65536

    def __init__(self, inner: _Source, keep: int = 1 << 20):
        self._inner, self.keep = inner, keep
        self._in_off = 0  # next raw offset to read from ``inner``
        self._buf = bytearray()
        self._start = 0  # expanded offset of _buf[0]
        self._eof = False
        self._chunk = bytearray(self.CHUNK)

    def pread_into(self, offset: int, buf) -> int:
        want = offset + len(buf)
        while not self._eof and self._start + len(self._buf) < want:
            got = self._inner.pread_into(self._in_off, memoryview(self._chunk))
            if got == 0:
                self._eof = True
                break
            self._in_off += got
            self._buf += bytes(self._chunk[:got]).replace(b"\r", b"\r\0").replace(
                b"\n", b"\r\n")
        if offset < self._start:
            raise ValueError(f"netascii offset {offset} already discarded")
        lo = offset - self._start
        chunk = memoryview(self._buf)[lo:lo + len(buf)]
        n = len(chunk)
        buf[:n] = chunk
        chunk.release()
        drop = min(offset, want - self.keep) - self._start
        if drop > self.CHUNK:
            del self._buf[:drop]
            self._start += drop
        return n

    def close(self) -> None:
        self._inner.close()


class _FileCache:
    """Whole small files shared between sessions, LRU by total bytes."""

    def __init__(self, file_max: int = CACHE_FILE_MAX, total_max: int = CACHE_TOTAL_MAX):
        self.file_max, self.total_max = file_max, total_max
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(st: os.stat_result) -> tuple:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.file_max:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._total += len(data)
            while self._total > self.total_max and self._items:
                _, old = self._items.popitem(last=False)
                self._total -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0


FILE_CACHE = _FileCache()


def _read_whole(fd: int, size: int) -> bytes | None:
    """Read a small file completely, or None if it changed size meanwhile."""
    buf = bytearray(size + 1)
    view, got = memoryview(buf), 0
    while got <= size:
        n = os.preadv(fd, [view[got:]], got)
        if n == 0:
            break
        got += n
    return bytes(buf[:got]) if got == size else None
