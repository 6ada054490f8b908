"""The API's documents as dataclasses.

Each is read from the server's JSON with ``from_dict``, which takes the
fields it knows and ignores the others, so that a newer server's additions
do not break an older client; the whole document is kept in ``raw``.
Timestamps are ``datetime`` objects in UTC (None when absent).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

_FRACTION = re.compile(r"\.(\d+)")


def parse_time(v: Any) -> Optional[_dt.datetime]:
    """An RFC 3339 time as the server writes it (nanoseconds, "Z"), or None
    for an absent or zero one."""
    if not v or not isinstance(v, str) or v.startswith("0001-01-01"):
        return None
    s = v.replace("Z", "+00:00")
    # datetime takes at most microseconds.
    s = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), s, count=1)
    try:
        return _dt.datetime.fromisoformat(s)
    except ValueError:
        return None


class _Doc:
    """from_dict for the dataclasses below: each field's value is converted
    by the field's "conv" metadata, if any."""

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]):
        if d is None:
            return None
        kw: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "raw":
                continue
            key = f.metadata.get("json", f.name)
            if key not in d:
                continue
            conv = f.metadata.get("conv")
            kw[f.name] = conv(d[key]) if conv is not None and d[key] is not None else d[key]
        obj = cls(**kw)
        obj.raw = d
        return obj


def _time():
    return field(default=None, metadata={"conv": parse_time})


def _list_of(cls):
    return field(default_factory=list, metadata={"conv": lambda v: [cls.from_dict(x) for x in v]})


def _doc(cls, json_name=None):
    md = {"conv": cls.from_dict}
    if json_name:
        md["json"] = json_name
    return field(default=None, metadata=md)


@dataclass
class LogDoc(_Doc):
    """One output stream of a finished job: its tail, and a link to it."""

    tail: str = ""
    truncated: bool = False
    bytes: int = 0
    dropped_bytes: int = 0
    url: str = ""
    expires_at: Optional[_dt.datetime] = _time()
    key: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Output(_Doc):
    """One file a job wrote, with a presigned link to it."""

    path: str = ""
    size: int = 0
    sha256: str = ""
    content_type: str = ""
    url: str = ""
    expires_at: Optional[_dt.datetime] = _time()
    key: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Limits(_Doc):
    """The limits a job ran under."""

    timeout_seconds: float = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    output_bytes: int = 0
    output_files: int = 0
    cpus: float = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Result(_Doc):
    """The document a finished job leaves (docs/jobs.md, "Results").

    ``status`` is ``succeeded``, ``failed``, ``timed_out``,
    ``out_of_memory``, ``canceled`` or ``error``. The parts this class does
    not model (egress audit, timings, ...) are dicts, and all of it is in
    ``raw``."""

    id: str = ""
    queue: str = ""
    status: str = ""
    exit_code: Optional[int] = None
    signal: str = ""
    reason: str = ""
    runtime: str = ""
    image: str = ""
    image_digest: str = ""
    attempt: int = 0
    submitted_at: Optional[_dt.datetime] = _time()
    started_at: Optional[_dt.datetime] = _time()
    finished_at: Optional[_dt.datetime] = _time()
    duration_ms: int = 0
    cpu_seconds: Optional[float] = None
    limits: Optional[Limits] = _doc(Limits)
    stdout: Optional[LogDoc] = _doc(LogDoc)
    stderr: Optional[LogDoc] = _doc(LogDoc)
    outputs: List[Output] = _list_of(Output)
    skipped_outputs: List[Dict[str, Any]] = field(default_factory=list)
    skipped_outputs_omitted: int = 0
    trimmed: Optional[Dict[str, Any]] = None
    egress: Optional[Dict[str, Any]] = None
    timings: Optional[Dict[str, Any]] = None
    webhook: Optional[Dict[str, Any]] = None
    worker: str = ""
    inputs: List[Dict[str, Any]] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass
class Job(_Doc):
    """A job as the API shows it: its state (``pending``, ``scheduled``,
    ``active``, ``retry`` or ``done``) and, once done, its result.

    ``existing`` is set on a submission that found the job by its
    idempotency key. ``files`` is set by ``Client.run``: what it downloaded,
    each output's path to the local file."""

    id: str = ""
    queue: str = ""
    tenant: str = ""
    state: str = ""
    retried: int = 0
    max_retry: int = 0
    last_error: str = ""
    next_attempt_at: Optional[_dt.datetime] = _time()
    result: Optional[Result] = _doc(Result)
    webhook_delivery: Optional[Dict[str, Any]] = None
    existing: bool = False
    files: Dict[str, str] = field(default_factory=dict, metadata={"json": "-"})
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.state == "done"


@dataclass
class LogEvent(_Doc):
    """One entry of a job's live output: ``data`` written to ``stream``
    (``stdout`` or ``stderr``) by attempt ``attempt``; or a marker, with no
    stream: ``dropped`` bytes left out before it, or the ``end`` of an
    attempt's output. ``id`` is where a follower resumes after it."""

    id: str = ""
    attempt: int = 0
    stream: str = ""
    data: str = ""
    dropped: int = 0
    end: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class JobPage:
    """A page of ``Client.list``: jobs newest first, and the cursor of the
    next page (None at the end)."""

    jobs: List[Job]
    next_cursor: Optional[str] = None
