"""What ``Client`` and ``AsyncClient`` share: module references, call
options, and turning envelopes into values or exceptions."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _protocol as proto
from ._calls import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_ARGS,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_MODULE,
    DEFAULT_QUEUE,
    DEFAULT_RESULT_TTL,
    build_call,
    encode_args,
    parse_hash,
    read_module,
)
from .envelope import Envelope
from .errors import InvalidCall, ResultTimeout, TaskFailed

#: A module: a path (``str`` or ``os.PathLike``), its bytes, ``sha256:HEX``
#: (or 64 hex digits), or a name given with ``tag`` (``NAME`` or ``NAME@VERSION``).
ModuleRef = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

#: The default Redis URL, as the ``wasq`` CLI's.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
#: The Rust broker's default host lease (seconds): what ``revoke`` assumes.
DEFAULT_LEASE = 10.0


def resolve_ref(keys: proto.Keys, module: ModuleRef, settings: proto.Settings) -> proto.Step:
    """The hex hash ``module`` stands for, uploading a file or bytes if the
    store lacks them (as ``wasq submit`` resolves its MODULE argument: a
    file first, then a hash, then a name)."""
    if isinstance(module, (bytes, bytearray, memoryview)):
        ref = yield from proto.upload(keys, bytes(module), settings)
        return ref[len("sha256:") :]
    if isinstance(module, os.PathLike):
        ref = yield from proto.upload(keys, read_module(module), settings)
        return ref[len("sha256:") :]
    if not isinstance(module, str):
        raise InvalidCall(
            f"a module is a path, bytes, sha256:HEX or a name, not {type(module).__name__}"
        )
    if os.path.isfile(module):
        ref = yield from proto.upload(keys, read_module(module), settings)
        return ref[len("sha256:") :]
    hex_hash = parse_hash(module)
    if hex_hash is not None:
        return hex_hash
    if module.startswith("sha256:"):
        raise InvalidCall(f"{module!r} is not a module hash (sha256: and 64 hex digits)")
    if module.endswith((".wasm", ".wat")) or "/" in module or os.sep in module:
        raise InvalidCall(f"cannot read module file {module}: no such file")
    return (yield from proto.resolve_name(keys, module))


class Options:
    """The options of a submission, checked before anything is sent."""

    def __init__(
        self,
        *,
        queue: str = DEFAULT_QUEUE,
        fuel: Optional[int] = None,
        memory: Optional[int] = None,
        timeout: Optional[float] = None,
        max_output: Optional[int] = None,
        retries: Optional[int] = None,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        countdown: Optional[float] = None,
        call_id: Optional[str] = None,
    ) -> None:
        self.limits: Dict[str, Any] = dict(
            queue=queue,
            fuel=fuel,
            memory=memory,
            timeout=timeout,
            max_output=max_output,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self.call_id = call_id
        if countdown is not None:
            if isinstance(countdown, bool) or not isinstance(countdown, (int, float)):
                raise InvalidCall(f"countdown must be a number of seconds, got {countdown!r}")
            if not countdown >= 0 or countdown == float("inf"):
                raise InvalidCall(
                    f"countdown must be a finite number of seconds >= 0, got {countdown!r}"
                )
        self.countdown = countdown

    def build(
        self,
        module_hex: str,
        task: str,
        args_json: str,
        max_args: int,
        call_id: Optional[str] = None,
    ) -> Tuple[Dict[str, Any], str]:
        return build_call(
            module_hex,
            task,
            args_json,
            call_id=call_id if call_id is not None else self.call_id,
            max_args=max_args,
            **self.limits,
        )


def args_of(positional: Tuple[Any, ...], keyword: Optional[Sequence[Any]]) -> str:
    """The JSON of a call's args: given positionally, or as ``args=[...]``
    (a list or tuple), not both."""
    if keyword is not None:
        if positional:
            raise InvalidCall("give the task's args either positionally or as args=[...], not both")
        return encode_args(keyword)
    return encode_args(list(positional))


def value_of(call_id: str, env: Optional[Envelope], timeout: Optional[float]) -> Any:
    """The result of a final envelope; :class:`ResultTimeout` if there is
    none, the :class:`TaskFailed` subclass of its kind if it failed."""
    if env is None:
        raise ResultTimeout(call_id, timeout)
    return env.value()


def values_of(
    ids: Sequence[str],
    envs: List[Optional[Envelope]],
    timeout: Optional[float],
    return_exceptions: bool,
) -> List[Any]:
    out: List[Any] = []
    for call_id, env in zip(ids, envs):
        try:
            out.append(value_of(call_id, env, timeout))
        except (TaskFailed, ResultTimeout) as e:
            if not return_exceptions:
                raise
            out.append(e)
    return out


class Config:
    """A client's settings, shared by ``Client`` and ``AsyncClient``."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        result_ttl: float,
        max_args: int,
        max_module: int,
        lease: float,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise InvalidCall("the key prefix must be a non-empty string")
        self.url = redis_url
        self.keys = proto.Keys(prefix)
        self.max_args = max_args
        self.settings = proto.Settings(result_ttl=result_ttl, lease=lease, max_module=max_module)


DEFAULTS = dict(
    result_ttl=DEFAULT_RESULT_TTL,
    max_args=DEFAULT_MAX_ARGS,
    max_module=DEFAULT_MAX_MODULE,
    lease=DEFAULT_LEASE,
)
