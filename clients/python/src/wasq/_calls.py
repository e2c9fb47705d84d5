"""Calls as they travel through a queue, built and checked as the Rust
broker builds and checks them (``broker/src/types.rs``,
``broker/src/validate.rs``): the same JSON, the same refusals."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .errors import InvalidCall, InvalidName

#: The queue calls go to when none is named.
DEFAULT_QUEUE = "default"
#: Largest args (bytes of their JSON) a call may carry: the hosts' default ``--max-args``.
DEFAULT_MAX_ARGS = 1024 * 1024
#: Largest module: the hosts' default ``--max-module``.
DEFAULT_MAX_MODULE = 64 * 1024 * 1024
#: How long results are kept, the Rust broker's default (seconds).
DEFAULT_RESULT_TTL = 24 * 3600.0
#: First backoff of a retry and its upper bound (seconds), as in Rust.
DEFAULT_BACKOFF = 0.2
DEFAULT_MAX_BACKOFF = 60.0
#: A hundred years in ms: the cap of every delay, as ``millis_capped`` in Rust.
FAR_MS = 100 * 365 * 24 * 3600 * 1000

_TASK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")
_QUEUE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_HEX = re.compile(r"[0-9a-fA-F]{64}\Z")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_call_id() -> str:
    """A fresh ULID (48 bits of ms, 80 random bits), as Rust's ``new_call_id``."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(out))


def is_valid_call_id(call_id: str) -> bool:
    """1 to 128 of ``[A-Za-z0-9_-]``."""
    return isinstance(call_id, str) and _CALL_ID.match(call_id) is not None


def is_valid_module_name(name: str) -> bool:
    """1 to 128 of ``[A-Za-z0-9_.-]``."""
    return _MODULE_NAME.match(name) is not None


def check_module_ref(name: str) -> None:
    """``NAME`` or ``NAME@VERSION``, else :class:`InvalidName`."""
    parts = name.split("@", 1)
    if not all(is_valid_module_name(p) for p in parts):
        raise InvalidName(f"{name!r} is not a module name (NAME or NAME@VERSION, [A-Za-z0-9_.-])")


def parse_hash(text: str) -> Optional[str]:
    """The 64 lowercase hex digits of ``sha256:HEX`` or ``HEX``; ``None`` if
    ``text`` is neither."""
    hex_part = text[len("sha256:") :] if text.startswith("sha256:") else text
    if _HEX.match(hex_part):
        return hex_part.lower()
    return None


def module_hash(data: bytes) -> str:
    """The hex sha256 of module bytes."""
    return hashlib.sha256(data).hexdigest()


def encode_args(args: Sequence[Any]) -> str:
    """Call arguments as compact JSON; :class:`InvalidCall` unless they are a
    list (or tuple) of JSON-serialisable values."""
    if not isinstance(args, (list, tuple)):
        raise InvalidCall(
            f"args must be a list (a JSON array, like [4, 5]), got {type(args).__name__}"
        )
    try:
        text = json.dumps(list(args), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidCall(f"args are not JSON-serialisable: {e}") from None
    return text


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise InvalidCall(f"{name} must be an integer from 0 to 2^64-1, got {value!r}")
    return value


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidCall(f"{name} must be a number of seconds, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InvalidCall(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return value


def millis_capped(seconds: float) -> int:
    """Whole milliseconds of ``seconds``, at most a hundred years'."""
    return min(int(seconds * 1000), FAR_MS)


def build_call(
    module_hex: str,
    task: str,
    args_json: str,
    *,
    queue: str = DEFAULT_QUEUE,
    fuel: Optional[int] = None,
    memory: Optional[int] = None,
    timeout: Optional[float] = None,
    max_output: Optional[int] = None,
    retries: Optional[int] = None,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    call_id: Optional[str] = None,
    max_args: int = DEFAULT_MAX_ARGS,
) -> Tuple[Dict[str, Any], str]:
    """The call and its JSON, as Rust's ``Call`` serialises, after the checks
    of ``check_call``: nothing is queued if one fails."""
    call_id = new_call_id() if call_id is None else call_id
    if not is_valid_call_id(call_id):
        raise InvalidCall(f"call id {call_id!r} is not 1-128 of [A-Za-z0-9_-]")
    if not isinstance(task, str) or not _TASK.match(task):
        raise InvalidCall(f"task name {task!r} is not [A-Za-z_][A-Za-z0-9_]*")
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise InvalidName(f"queue name {queue!r} is not 1-64 of [A-Za-z0-9_.-]")
    size = len(args_json.encode("utf-8"))
    if size > max_args:
        raise InvalidCall(f"args are {size} bytes, over the limit of {max_args}")
    limits: Dict[str, Any] = {}
    if fuel is not None:
        limits["fuel"] = _count("fuel", fuel)
    if memory is not None:
        limits["memory"] = _count("memory", memory)
    if timeout is not None:
        limits["timeout"] = _seconds("timeout", timeout)
    if max_output is not None:
        limits["max_output"] = _count("max_output", max_output)
    call: Dict[str, Any] = {
        "id": call_id,
        "module": module_hex,
        "task": task,
        "args": json.loads(args_json),
        "limits": limits,
        "attempt": 1,
        "submitted_ms": int(time.time() * 1000),
    }
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries < 2**32:
            raise InvalidCall(f"retries must be an integer from 0 to 2^32-1, got {retries!r}")
        call["retry"] = {
            "retries": retries,
            "backoff": _seconds("backoff", backoff),
            "max_backoff": _seconds("max_backoff", max_backoff),
        }
    call["queue"] = queue
    text = json.dumps(call, separators=(",", ":"), ensure_ascii=False)
    return call, text


def read_module(module: Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]) -> bytes:
    """Module bytes given as bytes or as a path."""
    if isinstance(module, (bytes, bytearray, memoryview)):
        return bytes(module)
    try:
        with open(module, "rb") as f:
            return f.read()
    except OSError as e:
        raise InvalidCall(f"cannot read module file {os.fspath(module)}: {e.strerror}") from None
