"""The exceptions of the wasq client.

Every exception derives from :class:`WasqError`. A call that ran (or could
not run) and failed raises a :class:`TaskFailed` subclass named after its
error kind (``docs/envelope.md``); its ``kind``, ``message`` and
``envelope`` say why. Failures of the infrastructure are
:class:`BrokerUnavailable`; a call refused before anything was queued is
:class:`InvalidCall`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Type

if TYPE_CHECKING:
    from .envelope import Envelope


class WasqError(Exception):
    """Base class of every wasq error."""


class BrokerUnavailable(WasqError):
    """Redis (or a wasq host, for :class:`~wasq.HostClient`) cannot be
    reached or stopped answering. Worth retrying later: nothing is known to
    have happened to the call."""


class HostBusy(BrokerUnavailable):
    """A ``wasq serve`` host answered 429: every slot is busy and nothing
    was run. Try again in a moment."""


class BrokerError(WasqError):
    """Redis (or a host) refused a request: a server error, a refused token,
    or an answer that is not what wasq writes."""


class InvalidCall(WasqError, ValueError):
    """A call refused before anything was queued: args that are not a list
    or not JSON-serialisable, args over the size limit, a bad task name, a
    bad limit or option."""


class InvalidName(InvalidCall):
    """A module, version or queue name outside ``[A-Za-z0-9_.-]`` (1 to 128
    characters, 64 for queues)."""


class ModuleTooLarge(WasqError, ValueError):
    """Module bytes over the client's ``max_module`` (64 MiB by default, the
    hosts' default)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the module is {size} bytes, over the limit of {limit}")
        self.size = size
        self.limit = limit


class UnknownCall(WasqError, LookupError):
    """No call with this id is known (never submitted, or its result
    expired)."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"no call {call_id!r} is known (or its result expired)")
        self.id = call_id


class ResultTimeout(WasqError, TimeoutError):
    """No final result within the time the caller waited. The call may
    still run: revoke it if its result is no longer wanted."""

    def __init__(self, call_id: str, timeout: Optional[float]) -> None:
        super().__init__(f"no result for call {call_id} within {timeout} s")
        self.id = call_id
        self.timeout = timeout


class TaskFailed(WasqError):
    """A call ended failed or revoked.

    ``kind`` is the error kind (``task_error``, ``fuel_exhausted``, ...),
    ``message`` the explanation and ``envelope`` the whole result envelope
    (``None`` when no call was made: a module name that resolves to nothing,
    a module a host refused at upload). Each kind has its own subclass, so
    ``except wasq.FuelExhausted`` catches that kind only.
    """

    kind = "task_error"

    def __init__(self, kind: str, message: str, envelope: Optional["Envelope"] = None) -> None:
        where = f"call {envelope.id} failed" if envelope is not None else "failed"
        super().__init__(f"{where}: {kind}: {message}")
        self.kind = kind
        self.message = message
        self.envelope = envelope

    @staticmethod
    def of(kind: str, message: str, envelope: Optional["Envelope"] = None) -> "TaskFailed":
        """The exception of this kind (plain :class:`TaskFailed` for a kind
        this client does not know)."""
        cls = KINDS.get(kind, TaskFailed)
        return cls(kind, message, envelope)


class TaskError(TaskFailed):
    """``task_error``: the task reported a failure (``Err``, a panic)."""

    kind = "task_error"


class Trap(TaskFailed):
    """``trap``: a wasm trap (unreachable, out of bounds, stack overflow)."""

    kind = "trap"


class FuelExhausted(TaskFailed):
    """``fuel_exhausted``: the fuel budget ran out."""

    kind = "fuel_exhausted"


class TaskTimeout(TaskFailed):
    """``timeout``: the call's wall-clock limit passed (not a wait of the
    client: that is :class:`ResultTimeout`)."""

    kind = "timeout"


class MemoryLimit(TaskFailed):
    """``memory_limit``: memory or tables would grow past the limit."""

    kind = "memory_limit"


class OutputLimit(TaskFailed):
    """``output_limit``: result, stdout, stderr or logs past their limit."""

    kind = "output_limit"


class InvalidModule(TaskFailed):
    """``invalid_module``: not a module a host runs (invalid wasm, a
    disallowed import, too large)."""

    kind = "invalid_module"


class TaskNotFound(TaskFailed):
    """``task_not_found``: the module has no such task."""

    kind = "task_not_found"


class BadInput(TaskFailed):
    """``bad_input``: args the task cannot take (wrong arity or types)."""

    kind = "bad_input"


class ModuleNotFound(TaskFailed):
    """``module_not_found``: no module with that hash or name is stored."""

    kind = "module_not_found"


class Integrity(TaskFailed):
    """``integrity``: stored module bytes do not hash to their key."""

    kind = "integrity"


class Revoked(TaskFailed):
    """``revoked``: the call was revoked before or while running."""

    kind = "revoked"


class Lost(TaskFailed):
    """``lost``: every delivery's host died; the call was dead-lettered."""

    kind = "lost"


KINDS: Dict[str, Type[TaskFailed]] = {
    cls.kind: cls
    for cls in (
        TaskError,
        Trap,
        FuelExhausted,
        TaskTimeout,
        MemoryLimit,
        OutputLimit,
        InvalidModule,
        TaskNotFound,
        BadInput,
        ModuleNotFound,
        Integrity,
        Revoked,
        Lost,
    )
}
