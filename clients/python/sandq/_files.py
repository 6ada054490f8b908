"""Files of a submission, streamed as multipart/form-data, and the safe
writing of a job's outputs."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import secrets
import unicodedata
from typing import IO, Any, Callable, Iterator, List, Optional, Tuple, Union

from ._errors import ChecksumMismatch, InvalidRequest, UnsafePath

CHUNK = 64 << 10

PathLike = Union[str, "os.PathLike[str]"]


class FileSource:
    """One file of a submission: its name in the sandbox and where its bytes
    come from (a local path, bytes or a binary file object), read a chunk
    at a time, never whole."""

    def __init__(self, name: str, source: Any) -> None:
        self.name = name
        self._path: Optional[str] = None
        self._data: Optional[bytes] = None
        self._fileobj: Optional[IO[bytes]] = None
        self._start: Optional[int] = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
            if not os.path.isfile(self._path):
                raise FileNotFoundError(errno.ENOENT, "no such file (only regular files can be submitted)", self._path)
        elif hasattr(source, "read"):
            self._fileobj = source
            try:
                self._start = source.tell() if source.seekable() else None
            except (AttributeError, OSError):
                self._start = None
        else:
            raise TypeError(f"file {name!r}: want a path, bytes or a binary file object, not {type(source).__name__}")

    @property
    def replayable(self) -> bool:
        """Whether the file can be sent again (for a retried submission)."""
        return self._fileobj is None or self._start is not None

    def chunks(self) -> Iterator[bytes]:
        if self._data is not None:
            yield self._data
        elif self._path is not None:
            with open(self._path, "rb") as f:
                while True:
                    b = f.read(CHUNK)
                    if not b:
                        return
                    yield b
        else:
            f = self._fileobj
            if self._start is not None:
                f.seek(self._start)
            while True:
                b = f.read(CHUNK)
                if not b:
                    return
                if isinstance(b, str):
                    raise TypeError(f"file {self.name!r}: open it in binary mode")
                yield b


def file_source(what: str, item: Any) -> FileSource:
    """A FileSource from what a caller gives for a file: a path (named by
    its base name), a (name, path | bytes | file object) pair, or a
    FileSource."""
    if isinstance(item, FileSource):
        src = item
    elif isinstance(item, tuple) and len(item) == 2:
        src = FileSource(item[0], item[1])
    elif isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        src = FileSource(os.path.basename(path), path)
    else:
        raise TypeError(f"{what}: want a path or a (name, source) pair, not {type(item).__name__}")
    if not isinstance(src.name, str) or src.name == "":
        raise InvalidRequest(f"{what}: a file needs a name", field=what)
    if any(unicodedata.category(c) == "Cc" for c in src.name):
        # It would break the part's MIME header; the server refuses it too.
        raise InvalidRequest(f"{what}: the file name {src.name!r} holds a control character", field=what)
    return src


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def multipart_body(boundary: str, spec: bytes, files: List[Tuple[str, FileSource]]) -> Iterator[bytes]:
    """The submission as multipart/form-data, chunk by chunk: the spec part
    first (the server wants it before any file), then the script, then the
    inputs."""
    b = boundary.encode("ascii")
    yield (b"--" + b + b"\r\nContent-Disposition: form-data; name=\"spec\"\r\n"
           b"Content-Type: application/json\r\n\r\n" + spec + b"\r\n")
    for part, src in files:
        yield (b"--" + b + b"\r\n"
               + f'Content-Disposition: form-data; name="{part}"; filename="{_quote(src.name)}"\r\n'.encode("utf-8")
               + b"Content-Type: application/octet-stream\r\n\r\n")
        for chunk in src.chunks():
            yield chunk
        yield b"\r\n"
    yield b"--" + b + b"--\r\n"


def new_boundary() -> str:
    return "sandq-" + secrets.token_hex(16)


# Downloads.

TEMP_PREFIX = ".sandq-download-"


def check_download_path(p: str) -> None:
    """Refuses a result's path that a worker could not have written and
    that could land outside the directory (as the Go client does)."""

    def bad(why: str) -> UnsafePath:
        return UnsafePath(f"unsafe path: {p!r} {why}", field="outputs")

    if not isinstance(p, str) or p == "":
        raise bad("is empty")
    if p == ".":
        raise bad("names the directory itself")
    if any(unicodedata.category(c) == "Cc" for c in p):
        raise bad("has control characters")
    if p.startswith("/"):
        raise bad("is absolute")
    if ".." in p.split("/"):
        raise bad("has a .. component")
    if posixpath.normpath(p) != p:
        raise bad("is not a clean relative path")
    if os.sep != "/" and (os.sep in p or (os.altsep and os.altsep in p) or ":" in p):
        raise bad("has a character this system takes for a path separator or drive")


def check_download_list(paths: List[str]) -> None:
    """Refuses names listed twice, and a file that is also another's
    directory."""
    seen = set()
    for p in paths:
        check_download_path(p)
        if p in seen:
            raise UnsafePath(f"unsafe path: {p!r} is listed twice in the result", field="outputs")
        seen.add(p)
    for p in paths:
        d = posixpath.dirname(p)
        while d:
            if d in seen:
                raise UnsafePath(f"unsafe path: {d!r} is a file in the result, and also the directory of {p!r}", field="outputs")
            d = posixpath.dirname(d)


_DIR_FD = os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd and os.rename in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")


def write_checked(root: str, rel: str, body: Callable[[], Iterator[bytes]], size: int, sha256: str) -> str:
    """Writes the chunks of body() to root/rel by way of a temporary file
    beside it, checks its length and sha256, syncs it and renames it into
    place: the file is whole and checked, or absent. No directory on the
    way may be a symbolic link (each is opened without following one), so
    nothing lands outside root. Returns the local path."""
    parts = rel.split("/")
    if _DIR_FD:
        dfd = _open_dirs(root, parts[:-1])
        try:
            return _write_at(dfd, root, rel, parts[-1], body, size, sha256)
        finally:
            os.close(dfd)
    # Without dir_fd (Windows): check each directory on the way instead.
    d = root
    for part in parts[:-1]:
        d = os.path.join(d, part)
        if os.path.islink(d):
            raise UnsafePath(f"unsafe path: {rel!r}: {d} is a symbolic link", field="outputs")
        os.makedirs(d, exist_ok=True)
    target = os.path.join(d, parts[-1])
    tmp = os.path.join(d, TEMP_PREFIX + secrets.token_hex(8) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    return _fill_and_place(fd, lambda: os.replace(tmp, target), lambda: os.unlink(tmp), target, rel, body, size, sha256)


def _open_dirs(root: str, parts: List[str]) -> int:
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"unsafe path: {'/'.join(parts)!r}: {part!r} in the way is a symbolic link or not a directory", field="outputs") from e
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_at(dfd: int, root: str, rel: str, base: str, body, size: int, sha256: str) -> str:
    target = os.path.join(root, *rel.split("/"))
    try:
        st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        if os.path.stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{rel!r}: a directory of that name is in the way", field="outputs")
    except FileNotFoundError:
        pass
    tmp = TEMP_PREFIX + secrets.token_hex(8) + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
    return _fill_and_place(
        fd,
        lambda: os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd),
        lambda: os.unlink(tmp, dir_fd=dfd),
        target, rel, body, size, sha256,
    )


def _fill_and_place(fd: int, place, remove, target: str, rel: str, body, size: int, sha256: str) -> str:
    placed = False
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as f:
            for chunk in body():
                n += len(chunk)
                if n > size:
                    raise ChecksumMismatch(f"{rel!r}: more bytes than the {size} the result gives", field="outputs")
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if n != size:
            raise ChecksumMismatch(f"{rel!r}: {n} bytes, the result gives {size}", field="outputs")
        if h.hexdigest() != sha256:
            raise ChecksumMismatch(f"{rel!r}: sha256 {h.hexdigest()}, the result gives {sha256}", field="outputs")
        place()
        placed = True
        return target
    finally:
        if not placed:
            try:
                remove()
            except OSError:
                pass
