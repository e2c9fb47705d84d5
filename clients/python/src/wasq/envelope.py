"""The result envelope (``docs/envelope.md``): the same JSON every way a
call is made."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from .errors import BrokerError, TaskFailed

#: States after which nothing changes.
FINAL_STATES = ("succeeded", "failed", "revoked")


@dataclass
class Envelope:
    """One call's outcome. ``error`` is ``{"kind": ..., "message": ...}``
    when ``state`` is ``failed`` or ``revoked``."""

    id: str
    state: str
    result: Any = None
    error: Optional[Dict[str, str]] = None
    stdout: str = ""
    stderr: str = ""
    logs: List[Dict[str, Any]] = field(default_factory=list)
    fuel_used: int = 0
    duration_ms: float = 0.0
    attempt: int = 0
    host: str = ""

    @classmethod
    def from_json(cls, data: Union[str, bytes, Dict[str, Any]]) -> "Envelope":
        """Parses an envelope; :class:`~wasq.BrokerError` if it is not one."""
        try:
            value = json.loads(data) if isinstance(data, (str, bytes)) else data
            return cls(
                id=str(value["id"]),
                state=str(value["state"]),
                result=value.get("result"),
                error=value.get("error"),
                stdout=value.get("stdout") or "",
                stderr=value.get("stderr") or "",
                logs=value.get("logs") or [],
                fuel_used=value.get("fuel_used") or 0,
                duration_ms=value.get("duration_ms") or 0.0,
                attempt=value.get("attempt") or 0,
                host=value.get("host") or "",
            )
        except (ValueError, KeyError, TypeError) as e:
            raise BrokerError(f"not a result envelope: {e}") from None

    @property
    def final(self) -> bool:
        """Whether no further change can happen."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the call succeeded."""
        return self.state == "succeeded"

    def failure(self) -> Optional[TaskFailed]:
        """The exception of a failed or revoked call; ``None`` otherwise."""
        if self.state not in ("failed", "revoked"):
            return None
        error = self.error or {}
        kind = str(error.get("kind") or ("revoked" if self.state == "revoked" else "task_error"))
        return TaskFailed.of(kind, str(error.get("message") or "no error given"), self)

    def value(self) -> Any:
        """The task's result; raises the :class:`~wasq.TaskFailed` subclass
        of its error kind if the call failed or was revoked."""
        failure = self.failure()
        if failure is not None:
            raise failure
        return self.result

    def to_dict(self) -> Dict[str, Any]:
        """The envelope as its JSON object."""
        return {
            "id": self.id,
            "state": self.state,
            "result": self.result,
            "error": self.error,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "logs": self.logs,
            "fuel_used": self.fuel_used,
            "duration_ms": self.duration_ms,
            "attempt": self.attempt,
            "host": self.host,
        }
