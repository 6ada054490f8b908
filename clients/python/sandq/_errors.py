"""Exceptions of the sandq client."""

from __future__ import annotations

from typing import Optional


class SandqError(Exception):
    """An error of the sandq client.

    A refusal by the server carries its HTTP ``status`` and the API's error
    body: ``code`` (stable, for programs), ``message`` (for people) and
    ``field`` (the part of the request at fault, when there is one, e.g.
    ``limits.memory_bytes`` or ``inputs``). Errors that are not the server's
    (a download that does not match its result, a connection that failed)
    have ``status`` None.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: str = "",
        field: str = "",
        job_id: str = "",
        retry_after: Optional[float] = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.job_id = job_id
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = ""
        if self.status is not None:
            where = f" ({self.code}, HTTP {self.status})" if self.code else f" (HTTP {self.status})"
        if self.field and not self.message.startswith(self.field + ":"):
            return f"{self.field}: {self.message}{where}"
        return f"{self.message}{where}"


class Refused(SandqError):
    """The server refused the request (a 4xx answer): asking again the same
    way gets the same answer, but for ``RateLimited``."""


class InvalidRequest(Refused):
    """400: a spec, file name or parameter the server does not accept."""


class Unauthenticated(Refused):
    """401: no token, or one the server does not know."""


class Forbidden(Refused):
    """403: e.g. a queue the tenant may not use."""


class NotFound(Refused):
    """404: no such job, or another tenant's (the server says the same)."""


class Conflict(Refused):
    """409: e.g. cancelling a finished job, or ``inputs_from`` naming a job
    that has not succeeded."""


class TooLarge(Refused):
    """413: too many inputs, or a file or all of them over a cap."""


class RateLimited(Refused):
    """429: over the tenant's request rate, pending jobs or open streams."""


class Unavailable(SandqError):
    """5xx: the server, or something it depends on, failed; or the server
    could not be reached at all (``status`` None)."""


class ChecksumMismatch(SandqError):
    """A downloaded file's length or sha256 differs from the result's."""


class UnsafePath(SandqError):
    """A name in a result that would be written outside the download
    directory, or through a symbolic link in it."""


class WaitTimeout(SandqError, TimeoutError):
    """``wait`` ran out of time before the job was done."""


class JobFailed(SandqError):
    """``run`` finished a job that did not succeed; ``job`` is the job, with
    its result (and ``files``, what was downloaded of its outputs)."""

    def __init__(self, job) -> None:  # job: Job
        self.job = job
        r = job.result
        status = r.status if r else job.state
        detail = ""
        if r is not None:
            if r.reason:
                detail = ": " + r.reason
            elif r.exit_code is not None:
                detail = f": exit status {r.exit_code}"
            if r.stderr is not None and r.stderr.tail:
                detail += "\n" + r.stderr.tail.rstrip()[-2000:]
        super().__init__(f"job {job.id} ended {status}{detail}", code=str(status), job_id=job.id)


_BY_STATUS = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    429: RateLimited,
}


def error_for(status: int, code: str, message: str, field: str = "", job_id: str = "", retry_after=None) -> SandqError:
    """The exception of an HTTP refusal."""
    if status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif 400 <= status < 500:
        cls = Refused
    elif status >= 500:
        cls = Unavailable
    else:
        cls = SandqError
    return cls(message, status=status, code=code, field=field, job_id=job_id, retry_after=retry_after)
