"""``HostClient``: calls straight to a ``wasq serve`` host over HTTP
(``docs/http.md``), no broker in between; the stdlib only."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Sequence, Tuple

from ._calls import DEFAULT_MAX_MODULE, module_hash, parse_hash, read_module
from ._common import ModuleRef, args_of
from .envelope import Envelope
from .errors import (
    BrokerError,
    BrokerUnavailable,
    HostBusy,
    InvalidCall,
    ModuleTooLarge,
    TaskFailed,
)

#: Largest answer read from a host (an envelope is capped far below this).
MAX_ANSWER = 64 * 1024 * 1024


class HostClient:
    """A client of one ``wasq serve`` host (or ``wasq host run --listen``)
    at ``url`` (``http://HOST:PORT`` or ``https://...``), sending ``token``
    as ``Authorization: Bearer`` when given. Each call runs at once in a
    fresh sandbox on that host and answers the same envelope as a queued
    call; nothing is queued, so a busy host (every slot taken) raises
    :class:`~wasq.HostBusy`. ``timeout`` bounds each HTTP request
    (seconds; ``None``: no bound)."""

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = 300.0,
        max_module: int = DEFAULT_MAX_MODULE,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidCall(f"invalid URL {url!r}: use http://HOST:PORT or https://HOST:PORT")
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.token = token or None
        self.timeout = timeout
        self.max_module = max_module

    def _send(self, method: str, path: str, body: bytes) -> Tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read(MAX_ANSWER)
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read(MAX_ANSWER)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BrokerUnavailable(f"cannot reach the host at {self.base}: {reason}") from None

    @staticmethod
    def _refused(status: int, body: bytes) -> Exception:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:512].decode("utf-8", "replace")
        if status == 429:
            return HostBusy(f"host busy: {message}")
        if status >= 500:
            return BrokerUnavailable(f"{status}: {message}")
        return BrokerError(f"refused ({status}): {message}")

    def upload(self, module: ModuleRef) -> str:
        """Sends a module (a path or its bytes) to the host, which checks and
        compiles it at once; returns ``sha256:HEX``. A module the host
        refuses raises the :class:`~wasq.TaskFailed` subclass of the kind it
        gives (``InvalidModule``, ``MemoryLimit``, ``Integrity``), with no
        envelope."""
        data = read_module(module)
        if len(data) > self.max_module:
            raise ModuleTooLarge(len(data), self.max_module)
        ref = f"sha256:{module_hash(data)}"
        status, body = self._send("PUT", f"/v1/modules?sha256={ref}", data)
        if status in (200, 201):
            return ref
        try:
            error = json.loads(body)["error"]
            kind, message = str(error["kind"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            raise self._refused(status, body) from None
        if status in (400, 413, 422):
            raise TaskFailed.of(kind, message)
        raise self._refused(status, body)

    def run(
        self,
        module: ModuleRef,
        task: str,
        *task_args: Any,
        args: Optional[Sequence[Any]] = None,
        fuel: Optional[int] = None,
        memory: Optional[int] = None,
        timeout: Optional[float] = None,
        max_output: Optional[int] = None,
    ) -> Envelope:
        """Runs ``task`` of ``module`` on the host and answers its envelope,
        failed ones too. ``module`` is ``sha256:HEX``, a name the host's
        module store knows (``wasq serve --redis``), or a path or bytes
        (sent first when the host lacks them). Limits as in
        :meth:`wasq.Client.submit`."""
        args_json = args_of(task_args, args)
        data: Optional[bytes] = None
        if isinstance(module, (bytes, bytearray, memoryview, os.PathLike)) or (
            isinstance(module, str) and os.path.isfile(module)
        ):
            data = read_module(module)
            ref = f"sha256:{module_hash(data)}"
        elif isinstance(module, str):
            ref = module
            if parse_hash(module) is not None:
                ref = f"sha256:{parse_hash(module)}"
        else:
            raise InvalidCall(
                f"a module is a path, bytes, sha256:HEX or a name, not {type(module).__name__}"
            )
        query: Dict[str, Any] = {}
        for name, value in (
            ("fuel", fuel),
            ("memory", memory),
            ("timeout", timeout),
            ("max_output", max_output),
        ):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise InvalidCall(f"{name} must be a number >= 0, got {value!r}")
                query[name] = value
        path = "/v1/call/{}/{}".format(
            urllib.parse.quote(ref, safe=":@"), urllib.parse.quote(task, safe="")
        )
        if query:
            path += "?" + urllib.parse.urlencode(query)
        env = self._call(path, args_json)
        if (
            data is not None
            and env.error is not None
            and env.error.get("kind") == "module_not_found"
        ):
            self.upload(data)
            env = self._call(path, args_json)
        return env

    def _call(self, path: str, args_json: str) -> Envelope:
        status, body = self._send("POST", path, args_json.encode("utf-8"))
        try:
            env = Envelope.from_json(body)
        except BrokerError:
            raise self._refused(status, body) from None
        if env.error is not None or status == 200:
            return env
        raise self._refused(status, body)

    def call(self, module: ModuleRef, task: str, *task_args: Any, **options: Any) -> Any:
        """:meth:`run`, answering the task's result; raises the
        :class:`~wasq.TaskFailed` subclass of its kind if it failed."""
        return self.run(module, task, *task_args, **options).value()

    def health(self) -> Dict[str, Any]:
        """``GET /v1/health``: the host's name, running calls, concurrency."""
        status, body = self._send("GET", "/v1/health", b"")
        if status != 200:
            raise self._refused(status, body)
        return json.loads(body)
