"""sandq: run untrusted analysis scripts in gVisor sandboxes, from Python.

A client of the job API that ``sandq serve`` answers (docs/api.md)::

    import sandq

    client = sandq.Client()  # SANDQ_SERVER and SANDQ_TOKEN
    job = client.run("report.py", inputs=["data.csv"], dir="out")
    print(job.result.stdout.tail, job.files)

Only the standard library is needed.
"""

from ._client import Client, parse_size
from ._errors import (
    ChecksumMismatch,
    Conflict,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    RateLimited,
    Refused,
    SandqError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsafePath,
    WaitTimeout,
)
from ._files import FileSource
from ._types import Job, JobPage, Limits, LogDoc, LogEvent, Output, Result

__version__ = "0.1.0"

__all__ = [
    "Client",
    "parse_size",
    "FileSource",
    "Job",
    "JobPage",
    "Limits",
    "LogDoc",
    "LogEvent",
    "Output",
    "Result",
    "SandqError",
    "Refused",
    "InvalidRequest",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "TooLarge",
    "RateLimited",
    "Unavailable",
    "ChecksumMismatch",
    "UnsafePath",
    "WaitTimeout",
    "JobFailed",
]
