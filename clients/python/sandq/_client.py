"""The client of sandq's job API (``sandq serve``; docs/api.md)."""

from __future__ import annotations

import datetime as _dt
import http.client
import json
import logging
import math
import os
import socket
import ssl
import time
import urllib.parse
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _files
from ._errors import (
    ChecksumMismatch,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    SandqError,
    Unavailable,
    WaitTimeout,
    error_for,
)
from ._types import Job, JobPage, LogEvent, Output, Result

__all__ = ["Client", "parse_size"]

USER_AGENT = "sandq-python/0.1"

log = logging.getLogger("sandq")

# How long one read of the event stream may wait: the server sends a
# keep-alive comment after 15 s of silence, so a stream silent for longer
# than this is dead, and is reopened.
STREAM_READ_TIMEOUT = 45.0
# The longest wait between tries that the client accepts from Retry-After.
MAX_RETRY_AFTER = 30.0

# The units of the CLI's sizes (internal/bytesize), in the order it tries
# them: the first that ends the string is its unit. Case matters.
_UNITS = (
    ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
    ("KB", 1000), ("MB", 1000**2), ("GB", 1000**3), ("TB", 1000**4),
    ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40),
    ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40),
    ("B", 1),
)
# The largest size the CLI takes: half the largest int64.
_MAX_SIZE = 1 << 62
_SIZE_WANT = "a non-negative number of bytes, with an optional unit: B; KiB, MiB, GiB, TiB (or Ki, Mi, Gi, Ti, or K, M, G, T) for powers of 1024; KB, MB, GB, TB for powers of 1000"


def parse_size(v: Union[int, str, None], what: str) -> Optional[int]:
    """A byte size: an int, or a string as the CLI reads sizes
    (internal/bytesize): a plain number of bytes, or a number with a unit,
    "512MiB", "1.5GiB", "4KB", "2G". KiB/MiB/GiB/TiB, Ki/Mi/Gi/Ti and K/M/G/T
    are powers of 1024, KB/MB/GB/TB powers of 1000, B is bytes; units are
    case-sensitive. Fractions are allowed and cut to whole bytes. A negative
    size, or one over 2**62 bytes, is refused. (The number is Python's
    float syntax, which differs from Go's in corners such as hexadecimal
    floats.)"""
    if v is None:
        return None
    if isinstance(v, bool):
        raise InvalidRequest(f"{what}: want a number of bytes or a size such as 512MiB, not {v!r}", field=what)
    if isinstance(v, int):
        if v < 0:
            raise InvalidRequest(f"{what}: {v!r} is negative (want {_SIZE_WANT})", field=what)
        if v > _MAX_SIZE:
            raise InvalidRequest(f"{what}: {v!r} is too large", field=what)
        return v
    if isinstance(v, str):
        t = v.strip()
        mult = 1
        for suffix, m in _UNITS:
            if t.endswith(suffix):
                t, mult = t[: -len(suffix)].strip(), m
                break
        try:
            f = float(t) if t.isascii() else math.nan
        except ValueError:
            f = math.nan
        if not math.isfinite(f) or f < 0:
            raise InvalidRequest(f"{what}: {v!r} is not a size (want {_SIZE_WANT})", field=what)
        if f * mult > _MAX_SIZE:
            raise InvalidRequest(f"{what}: {v!r} is too large", field=what)
        return int(f * mult)
    raise InvalidRequest(f"{what}: {v!r} is not a size (want {_SIZE_WANT})", field=what)


def _job_id(job: Union[str, Job]) -> str:
    jid = job.id if isinstance(job, Job) else job
    if not isinstance(jid, str) or not jid:
        raise TypeError(f"want a job or a job ID, not {job!r}")
    return jid


class Client:
    """A producer talking to ``sandq serve`` with a bearer token.

    ``server`` (e.g. ``http://sandq.internal:8080``) and ``token`` default
    to the ``SANDQ_SERVER`` and ``SANDQ_TOKEN`` environment variables, as
    for the CLI. ``timeout`` bounds each connection and read (not a whole
    upload or download, which may take long). Answers 429 and 503 that carry
    ``Retry-After`` are tried again after that long (at most 30 s each), up
    to ``max_retries`` times.
    """

    def __init__(
        self,
        server: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 4,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        server = server or os.environ.get("SANDQ_SERVER", "")
        token = token or os.environ.get("SANDQ_TOKEN", "")
        u = urllib.parse.urlsplit(server)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"server URL {server!r}: want http(s)://host:port (or set SANDQ_SERVER)")
        if not token:
            raise ValueError("a server needs a token (token=... or SANDQ_TOKEN)")
        self.server = server.rstrip("/")
        self._scheme = u.scheme
        self._host = u.hostname
        self._port = u.port
        self._prefix = u.path.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.max_retries = max_retries
        self._ssl = ssl_context

    def __repr__(self) -> str:
        return f"Client({self.server!r})"

    # Transport.

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl or ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Optional[Callable[[], Iterable[bytes]]] = None,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        retry: bool = True,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends a request and returns the connection and the response of a
        2xx answer, whose body the caller reads and then closes the
        connection; anything else is raised as a SandqError. body, when
        given, makes the request's chunks anew for each try."""
        h = {"Authorization": "Bearer " + self._token, "User-Agent": USER_AGENT}
        h.update(headers or {})
        attempt = 0
        while True:
            conn = self._connect(self.timeout if timeout is None else timeout)
            try:
                resp = self._roundtrip(conn, method, self._prefix + path, body, h)
            except SandqError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise Unavailable(f"{method} {path}: {self.server}: {e}") from e
            if resp.status < 300:
                return conn, resp
            try:
                err = self._error(resp)
            finally:
                conn.close()
            attempt += 1
            if not retry or attempt > self.max_retries or not _retryable(err):
                raise err
            wait = min(err.retry_after, MAX_RETRY_AFTER)
            log.info("%s %s: %s; trying again in %.1fs (retry %d of %d)", method, path, err, wait, attempt, self.max_retries)
            time.sleep(wait)

    @staticmethod
    def _roundtrip(conn, method, path, body, headers) -> http.client.HTTPResponse:
        try:
            if body is None:
                conn.request(method, path, headers=headers)
            else:
                # An iterable body without a Content-Length goes out with
                # chunked transfer encoding, chunk by chunk.
                conn.request(method, path, body=iter(body()), headers=dict(headers, **{"Transfer-Encoding": "chunked"}), encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            # The server may refuse a submission before it has read all of
            # it (a queue the tenant may not use, a file over its cap) and
            # close the connection: its answer says why.
            pass
        return conn.getresponse()

    @staticmethod
    def _error(resp: http.client.HTTPResponse) -> SandqError:
        raw = resp.read(1 << 20)
        code, message, field, job_id = "http", raw.decode("utf-8", "replace").strip() or resp.reason, "", ""
        try:
            e = json.loads(raw)["error"]
            code, message = e["code"], e.get("message", "")
            field, job_id = e.get("field", ""), e.get("job_id", "")
        except (ValueError, KeyError, TypeError):
            pass
        retry_after = None
        ra = resp.getheader("Retry-After")
        if ra:
            try:
                retry_after = max(float(ra), 0.0)
            except ValueError:
                retry_after = None
        return error_for(resp.status, code, message, field, job_id, retry_after)

    def _json(self, method: str, path: str, **kw) -> Any:
        conn, resp = self._send(method, path, **kw)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unavailable(f"{method} {path}: {e}") from e
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError as e:
            raise SandqError(f"{method} {path}: the answer is not JSON: {e}") from e

    # Jobs.

    def submit(
        self,
        script: Any,
        *,
        inputs: Union[Sequence[Any], Mapping[str, Any], None] = None,
        args: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        network: Optional[Sequence[str]] = None,
        image: Optional[str] = None,
        queue: Optional[str] = None,
        runtime: Optional[str] = None,
        timeout: Optional[float] = None,
        memory: Union[int, str, None] = None,
        disk: Union[int, str, None] = None,
        output_size: Union[int, str, None] = None,
        output_files: Optional[int] = None,
        cpus: Optional[float] = None,
        idempotency_key: Optional[str] = None,
        webhook: Optional[str] = None,
        inputs_from: Optional[Sequence[Union[str, Job, Mapping[str, str], Tuple[Any, str]]]] = None,
    ) -> Job:
        """Submits a job and returns it as queued (``existing`` is set when
        its idempotency key found a job submitted before).

        ``script`` and each of ``inputs`` is a path (named in the sandbox by
        its base name), or a ``(name, source)`` pair whose source is a path,
        bytes or a binary file object; ``inputs`` may also be a dict of name
        to source. Files are streamed to the server, never read whole.
        ``timeout`` is the job's limit in seconds; ``memory``, ``disk`` and
        ``output_size`` are bytes or sizes such as ``"512MiB"``;
        ``output_files`` a count; ``cpus`` cores. ``inputs_from`` takes the
        outputs of the tenant's finished jobs as inputs: each a job (or its
        ID), a ``(job, glob)`` pair, or a ``{"job": ID, "glob": ...}`` dict.
        A refusal raises a SandqError naming the ``field`` at fault.
        """
        spec: Dict[str, Any] = {}
        if runtime:
            spec["runtime"] = runtime
        if args:
            if isinstance(args, str):
                raise TypeError("args: want a list of strings, not a string")
            spec["args"] = [str(a) for a in args]
        if env:
            spec["env"] = dict(env)
        limits: Dict[str, Any] = {}
        if timeout is not None:
            limits["timeout_seconds"] = float(timeout)
        for key, v, what in (("memory_bytes", memory, "memory"), ("disk_bytes", disk, "disk"), ("output_bytes", output_size, "output_size")):
            n = parse_size(v, what)
            if n is not None:
                limits[key] = n
        if output_files is not None:
            limits["output_files"] = int(output_files)
        if cpus is not None:
            limits["cpus"] = float(cpus)
        if limits:
            spec["limits"] = limits
        if network:
            if isinstance(network, str):
                raise TypeError("network: want a list of groups or hosts, not a string")
            spec["network"] = list(network)
        if webhook:
            spec["webhook"] = webhook
        if queue:
            spec["queue"] = queue
        if idempotency_key:
            spec["idempotency_key"] = idempotency_key
        if image:
            spec["image"] = image
        if inputs_from:
            spec["inputs_from"] = [_input_from(x) for x in inputs_from]

        files: List[Tuple[str, _files.FileSource]] = [("script", _files.file_source("script", script))]
        if isinstance(inputs, Mapping):
            items: Iterable[Any] = list(inputs.items())
        elif isinstance(inputs, (str, os.PathLike)):
            items = [inputs]
        else:
            items = inputs or []
        for item in items:
            files.append(("input", _files.file_source("inputs", item)))
        boundary = _files.new_boundary()
        spec_bytes = json.dumps(spec).encode("utf-8")
        replayable = all(src.replayable for _, src in files)
        doc = self._json(
            "POST", "/v1/jobs",
            body=lambda: _files.multipart_body(boundary, spec_bytes, files),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            retry=replayable,
        )
        return Job.from_dict(doc)

    def get(self, job: Union[str, Job]) -> Job:
        """The job's state and, once it is done, its result."""
        return Job.from_dict(self._json("GET", "/v1/jobs/" + urllib.parse.quote(_job_id(job), safe="")))

    def list(
        self,
        *,
        queue: Optional[str] = None,
        state: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobPage:
        """A page of the tenant's jobs, newest first; pass ``next_cursor``
        back as ``cursor`` for the next (None at the end)."""
        q = {k: v for k, v in (("queue", queue), ("state", state), ("cursor", cursor)) if v}
        if limit is not None:
            q["limit"] = str(limit)
        doc = self._json("GET", "/v1/jobs" + ("?" + urllib.parse.urlencode(q) if q else ""))
        return JobPage(jobs=[Job.from_dict(j) for j in doc.get("jobs") or []], next_cursor=doc.get("next_cursor") or None)

    def iter_jobs(self, **filters) -> Iterator[Job]:
        """Every job of the tenant that matches (see ``list``), page by
        page."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, job: Union[str, Job]) -> str:
        """Cancels a job; returns what that did: ``removed`` (it had not
        started), ``signalled`` (it was running) or ``queued``. A job
        already finished raises Conflict (code ``job_finished``)."""
        doc = self._json("POST", "/v1/jobs/" + urllib.parse.quote(_job_id(job), safe="") + "/cancel")
        return doc.get("outcome", "")

    # The event stream.

    def wait(
        self,
        job: Union[str, Job],
        timeout: Optional[float] = None,
        *,
        on_state: Optional[Callable[[Job], None]] = None,
        on_log: Optional[Callable[[LogEvent], None]] = None,
    ) -> Job:
        """Follows the job's event stream until it is done and returns it
        with its result. A stream that breaks is reopened where it broke
        (Last-Event-ID). ``timeout`` (seconds) raises WaitTimeout when the
        job is not done by then; the job goes on. ``on_log`` gets the job's
        live output, ``on_state`` each change of state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        for kind, item in self._follow(_job_id(job), "", True, deadline):
            if kind == "log":
                if on_log is not None:
                    on_log(item)
            else:
                last = item
                if on_state is not None:
                    on_state(item)
        return last

    def logs(
        self,
        job: Union[str, Job],
        follow: bool = True,
        *,
        after: str = "",
        timeout: Optional[float] = None,
    ) -> Iterator[LogEvent]:
        """Yields the job's live output as LogEvents: with ``follow``, as
        the job writes it, until the job is done; without, what was written
        so far. ``after`` resumes after the event of that ``id``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for kind, item in self._follow(_job_id(job), after, follow, deadline):
            if kind == "log":
                yield item

    def _follow(self, jid: str, cursor: str, follow: bool, deadline: Optional[float]) -> Iterator[Tuple[str, Any]]:
        """The job's events, ("state", Job) and ("log", LogEvent), reopening
        the stream where it broke, until the job is done (or, without
        follow, until the state after the output so far)."""
        path = "/v1/jobs/" + urllib.parse.quote(jid, safe="") + "/events"
        if not follow:
            path += "?follow=false"
        while True:
            wait = 1.0
            try:
                for event, eid, data in self._stream(path, cursor, deadline):
                    if event in ("state", "done"):
                        j = Job.from_dict(_decode(event, data))
                        yield "state", j
                        if event == "done" or not follow:
                            return
                    elif event == "log":
                        e = LogEvent.from_dict(_decode(event, data))
                        yield "log", e
                    elif event == "error":
                        err = (_decode(event, data) or {}).get("error") or {}
                        if err.get("code") == "not_found":
                            # The job is gone: no reconnection finds it.
                            raise NotFound(err.get("message", "no such job"), status=404, code="not_found")
                        raise Unavailable(f"event stream: {err.get('message', '')} ({err.get('code', '')})")
                    # An event's ID is where the stream resumes, once the
                    # event has been handled.
                    if event and eid:
                        cursor = eid
                raise Unavailable("event stream ended before the job did")
            except WaitTimeout:
                raise
            except SandqError as e:
                # A refusal is final, but for a server overloaded, short of
                # Redis for a moment, or at the tenant's rate or cap of
                # streams: those are tried again when the server says.
                if e.status is not None and e.status not in (429, 503):
                    raise
                if e.retry_after:
                    wait = min(max(e.retry_after, wait), MAX_RETRY_AFTER)
            log.info("event stream of job %s broke; reopening it in %.1fs", jid, wait)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise WaitTimeout(f"job {jid} is not done yet", code="timeout", job_id=jid)
            time.sleep(wait)

    def _stream(self, path: str, cursor: str, deadline: Optional[float]) -> Iterator[Tuple[str, str, str]]:
        """One event stream, resumed after cursor: (event, id, data) for
        each event. Raises WaitTimeout at the deadline, Unavailable when the
        connection fails."""

        def read_timeout() -> float:
            if deadline is None:
                return STREAM_READ_TIMEOUT
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"{path}: the job is not done yet", code="timeout")
            return min(left, STREAM_READ_TIMEOUT)

        headers = {"Accept": "text/event-stream"}
        if cursor:
            headers["Last-Event-ID"] = cursor
        conn, resp = self._send("GET", path, headers=headers, timeout=read_timeout(), retry=False)
        try:
            event, eid, data = "", "", []
            while True:
                if conn.sock is not None:
                    conn.sock.settimeout(read_timeout())
                try:
                    line = resp.readline(16 << 20)
                except socket.timeout as e:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout(f"{path}: the job is not done yet", code="timeout") from e
                    raise Unavailable(f"event stream: nothing for {STREAM_READ_TIMEOUT:.0f}s") from e
                except (OSError, http.client.HTTPException) as e:
                    raise Unavailable(f"event stream: {e}") from e
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if text == "":
                    if event:
                        yield event, eid, "\n".join(data)
                    event, eid, data = "", "", []
                elif text.startswith(":"):
                    continue
                elif text.startswith("event:"):
                    event = text[6:].strip()
                elif text.startswith("id:"):
                    eid = text[3:].lstrip(" ")
                elif text.startswith("data:"):
                    data.append(text[5:][1:] if text[5:].startswith(" ") else text[5:])
        finally:
            conn.close()

    # Outputs.

    def download(
        self,
        job: Union[str, Job],
        dir: Union[str, "os.PathLike[str]"],
        *,
        include: Optional[Callable[[Output], bool]] = None,
    ) -> Dict[str, str]:
        """Downloads a finished job's outputs into dir (made if needed),
        each by way of a temporary file beside its place, checked against
        the result's length and sha256 and renamed into place: a file is
        whole and checked, or absent. Every name is checked first; one that
        would land outside dir, or through a symbolic link in it, raises
        UnsafePath and nothing is fetched. Returns each output's path to
        the local file. ``include`` picks outputs."""
        j = job if isinstance(job, Job) and job.result is not None else self.get(job)
        if j.result is None:
            raise Conflict(f"job {j.id} is {j.state}: it has no outputs until it is done", code="job_not_finished", job_id=j.id)
        outputs = self._outputs(j.result)
        if include is not None:
            outputs = [o for o in outputs if include(o)]
        _files.check_download_list([o.path for o in outputs])
        now = _dt.datetime.now(_dt.timezone.utc)
        for o in outputs:
            if len(o.sha256) != 64 or o.sha256.lower() != o.sha256 or any(c not in "0123456789abcdef" for c in o.sha256):
                raise ChecksumMismatch(f"output {o.path!r}: the result gives no valid sha256 ({o.sha256!r})", field="outputs")
            if o.expires_at is not None and o.expires_at < now:
                raise SandqError(f"the download links of job {j.id} expired at {o.expires_at.isoformat()}: they are signed once, when the job ends", code="links_expired", job_id=j.id)
        root = os.fspath(dir)
        got: Dict[str, str] = {}
        for o in outputs:
            got[o.path] = _files.write_checked(root, o.path, lambda o=o: self._fetch(o.url), o.size, o.sha256)
        return got

    def _outputs(self, r: Result) -> List[Output]:
        """The result's outputs; for a result trimmed of some, all of them
        from its manifest."""
        t = r.trimmed or {}
        if t.get("outputs"):
            m = t.get("manifest") or {}
            if not m.get("url"):
                raise SandqError(f"the result of job {r.id} lists {t['outputs']} fewer outputs than the job wrote and links no manifest of them", job_id=r.id)
            raw = b"".join(self._fetch(m["url"], limit=256 << 20))
            try:
                return [Output.from_dict(o) for o in json.loads(raw).get("outputs") or []]
            except (ValueError, AttributeError) as e:
                raise SandqError(f"the manifest of job {r.id}: {e}", job_id=r.id) from e
        return list(r.outputs)

    def _fetch(self, url: str, limit: Optional[int] = None) -> Iterator[bytes]:
        """The bytes at a result's presigned link, chunk by chunk. The
        bearer token is not sent: the link carries its own signature, and
        the store is another host."""
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl if url.startswith("https:") else None) as resp:
                n = 0
                while True:
                    b = resp.read(_files.CHUNK)
                    if not b:
                        return
                    n += len(b)
                    if limit is not None and n > limit:
                        raise SandqError(f"{urllib.parse.urlsplit(url).path}: over {limit} bytes")
                    yield b
        except urllib.error.HTTPError as e:
            raise error_for(e.code, "download", f"{urllib.parse.urlsplit(url).path}: {e.reason}") from e
        except (OSError, http.client.HTTPException) as e:
            raise Unavailable(f"{urllib.parse.urlsplit(url).path}: {e}") from e

    def run(
        self,
        script: Any,
        *,
        dir: Union[str, "os.PathLike[str]", None] = None,
        wait_timeout: Optional[float] = None,
        check: bool = True,
        on_log: Optional[Callable[[LogEvent], None]] = None,
        **submit_args: Any,
    ) -> Job:
        """submit, wait and download, for the common case: returns the
        done job, with ``files`` the outputs downloaded into ``dir`` (the
        current directory when None). With ``check`` (the default), a job
        that did not succeed raises JobFailed, after what it wrote has been
        downloaded. Other arguments are submit's. A result trimmed of its
        outputs (over the server's size cap) is downloaded from its
        manifest, as ``download`` does."""
        job = self.submit(script, **submit_args)
        job = self.wait(job, wait_timeout, on_log=on_log)
        # Whenever there is a result, not only when it lists outputs: one
        # trimmed of them lists none, and its manifest has them all. A
        # download of nothing fetches nothing and makes no directory.
        if job.result is not None:
            job.files = self.download(job, os.curdir if dir is None else dir)
        if check and (job.result is None or not job.result.succeeded):
            raise JobFailed(job)
        return job


def _retryable(err: SandqError) -> bool:
    return err.status in (429, 503) and err.retry_after is not None and err.code != "not_replicated"


def _decode(event: str, data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise Unavailable(f"event stream: bad {event} event: {e}") from e


def _input_from(x: Any) -> Dict[str, str]:
    if isinstance(x, (str, Job)):
        return {"job": _job_id(x)}
    if isinstance(x, tuple) and len(x) == 2:
        d = {"job": _job_id(x[0])}
        if x[1]:
            d["glob"] = x[1]
        return d
    if isinstance(x, Mapping):
        return dict(x)
    raise TypeError(f"inputs_from: want a job, a job ID, a (job, glob) pair or a dict, not {x!r}")
