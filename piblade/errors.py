"""The one error tree of piblade.

Every error a user can cause or fix carries a *hint* that says what to do next.
The CLI turns a :class:`PibladeError` into one red line plus the hint and exit
code 1; anything else is a bug and keeps its traceback.

    PibladeError
    ├── InventoryError          the inventory file is wrong (file, line, key)
    ├── JobError
    │   ├── UnknownJob          no registered job has that name
    │   ├── BadParameter        a parameter is missing, mistyped or out of range
    │   ├── UnregisteredCallable  a queued job names code that is not a registered job
    │   └── TaskStopped         a running task was stopped on request (RQ's stop-job command)
    ├── ClusterError
    │   ├── RedisUnavailable    the queue server does not answer or refuses our password
    │   ├── LocalClusterError   `piblade local` could not start or stop something
    │   ├── ResultsUnavailable  the results database does not answer, or its schema is newer
    │   │                       than this piblade (piblade.resultsdb)
    │   └── TestbedError        the virtual cluster cannot boot here (piblade.testbed.system)
    ├── NotFound                a job or run id that does not exist
    ├── SecretError             a secrets file is missing or readable by others
    ├── AlertConfigError        alert targets or settings missing or malformed (piblade.alertconfig)
    ├── SshError                a node cannot be reached or logged into (piblade.provision.ssh)
    │   ├── HostKeyUnknown      not in known_hosts yet: `piblade trust NODE`
    │   └── HostKeyChanged      a different key than known_hosts says: refused, always
    ├── NasError                the share refused or failed an operation (piblade.nas.errors:
    │                           unreachable, auth, share or path not found, exists, disk full, ...)
    ├── TunnelError             ngrok could not be reached or refused us (piblade.tunnel)
    └── DashboardError          the dashboard cannot start (piblade.dashboard.server)

The subclasses outside this module live next to the code that raises them, so a
module that never touches SMB or SSH does not import them.
"""

from __future__ import annotations


class PibladeError(Exception):
    """Base of every error piblade reports to a user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InventoryError(PibladeError):
    """An inventory file is invalid; names where, so the user can fix it."""

    def __init__(
        self,
        message: str,
        *,
        file: str,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file if line is None else f"{file}:{line}"
        text = f"{where}: {message}" if key is None else f"{where}: {key}: {message}"
        super().__init__(text, hint)
        self.file = file
        self.line = line
        self.key = key


class JobError(PibladeError):
    """A job request that cannot be accepted."""


class UnknownJob(JobError):
    pass


class BadParameter(JobError):
    pass


class UnregisteredCallable(JobError):
    """Raised on a worker for a queued job whose function is not registered."""


class TaskStopped(JobError):
    """Raised inside a running task, at its next return to Python, when someone stopped it."""


class ClusterError(PibladeError):
    pass


class RedisUnavailable(ClusterError):
    pass


class LocalClusterError(ClusterError):
    pass


class NotFound(PibladeError):
    pass


class SecretError(PibladeError):
    pass
