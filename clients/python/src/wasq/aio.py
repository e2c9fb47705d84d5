"""``AsyncClient``: :class:`wasq.Client` on asyncio (``redis.asyncio``),
the same methods as coroutines."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

import redis.asyncio as aioredis

from . import _protocol as proto
from ._common import (
    DEFAULT_REDIS_URL,
    DEFAULTS,
    Config,
    ModuleRef,
    Options,
    args_of,
    resolve_ref,
    value_of,
    values_of,
)
from ._calls import DEFAULT_QUEUE, encode_args, read_module
from .envelope import Envelope
from .errors import InvalidCall


class AsyncHandle:
    """A submitted call; ``await handle.get()`` waits for its result."""

    def __init__(self, client: "AsyncClient", call_id: str) -> None:
        self.client = client
        self.id = call_id

    async def get(self, timeout: Optional[float] = None) -> Any:
        """Waits up to ``timeout`` seconds (forever with ``None``) and
        returns the task's result.

        Raises :class:`~wasq.ResultTimeout` if it did not finish in time,
        the :class:`~wasq.TaskFailed` subclass of its error kind if it
        failed, :class:`~wasq.BrokerUnavailable` if Redis cannot be reached.
        """
        return value_of(self.id, await self.envelope(timeout), timeout)

    async def envelope(self, timeout: Optional[float] = None) -> Optional[Envelope]:
        """The final envelope, succeeded or failed; ``None`` if the call did
        not finish within ``timeout`` seconds."""
        return await self.client.result(self.id, timeout)

    async def status(self) -> Optional[Envelope]:
        """The current envelope (``queued``, ``running``, ... or final)."""
        return await self.client.status(self.id)

    async def revoke(self) -> bool:
        """Revokes the call; ``False`` if it is already final."""
        return await self.client.revoke(self.id)

    def __repr__(self) -> str:
        return f"<wasq.AsyncHandle {self.id}>"


class AsyncClient:
    """:class:`wasq.Client` for asyncio. A client of a wasq deployment: the Redis at ``redis_url`` and the key
    prefix its hosts use (``wasq host run --prefix``, default ``wasq``).

    It runs the Rust broker's own Lua scripts, so hosts and the ``wasq`` CLI
    see its calls as theirs. ``result_ttl`` (seconds, default a day, 0 keeps
    them) is how long a queued call's state lives, as the Rust broker's
    ``result_ttl``; ``max_args`` and ``max_module`` refuse oversized args
    and modules before anything is sent (the hosts' defaults, 1 MiB and
    64 MiB). ``redis_options`` go to ``redis.Redis.from_url``.

    Usable from many tasks of one event loop at once.
    """

    def __init__(
        self,
        redis_url: str = DEFAULT_REDIS_URL,
        prefix: str = "wasq",
        *,
        result_ttl: float = DEFAULTS["result_ttl"],
        max_args: int = DEFAULTS["max_args"],
        max_module: int = DEFAULTS["max_module"],
        connect_timeout: float = 5.0,
        **redis_options: Any,
    ) -> None:
        self._config = Config(
            redis_url, prefix, result_ttl, max_args, max_module, DEFAULTS["lease"]
        )
        redis_options.setdefault("socket_connect_timeout", connect_timeout)
        self.redis = aioredis.Redis.from_url(redis_url, **redis_options)

    @property
    def prefix(self) -> str:
        return self._config.keys.prefix

    async def _run(self, step: proto.Step) -> Any:
        return await proto.run_async(self.redis, self._config.url, step)

    async def close(self) -> None:
        """Closes the connections."""
        close = (
            getattr(self.redis, "aclose", None) or self.redis.close
        )  # redis-py < 5 has no aclose
        await close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---- modules ---------------------------------------------------------

    async def upload(self, module: ModuleRef) -> str:
        """Stores a module (a path or its bytes) under its sha256 unless it
        is stored already; returns ``sha256:HEX``. Write-once: stored bytes
        never change. :class:`~wasq.ModuleTooLarge` past ``max_module``."""
        return await self._run(
            proto.upload(self._config.keys, read_module(module), self._config.settings)
        )

    async def resolve(self, module: ModuleRef) -> str:
        """The ``sha256:HEX`` a module reference stands for (uploading a
        path or bytes if needed); :class:`~wasq.ModuleNotFound` for an
        unknown name."""
        return "sha256:" + await self._run(
            resolve_ref(self._config.keys, module, self._config.settings)
        )

    async def tag(self, name: str, module: ModuleRef, version: Optional[str] = None) -> str:
        """Points ``name`` (and ``name@version``) at a module, as ``wasq
        module tag``; returns its ``sha256:HEX``."""
        hex_hash = await self._run(resolve_ref(self._config.keys, module, self._config.settings))
        await self._run(proto.tag(self._config.keys, name, version, hex_hash))
        return "sha256:" + hex_hash

    # ---- calls -----------------------------------------------------------

    async def submit(
        self,
        module: ModuleRef,
        task: str,
        *task_args: Any,
        args: Optional[Sequence[Any]] = None,
        queue: str = DEFAULT_QUEUE,
        fuel: Optional[int] = None,
        memory: Optional[int] = None,
        timeout: Optional[float] = None,
        max_output: Optional[int] = None,
        retries: Optional[int] = None,
        countdown: Optional[float] = None,
        call_id: Optional[str] = None,
        **options: Any,
    ) -> AsyncHandle:
        """Queues a call of ``task`` in ``module`` with ``task_args`` (or
        ``args=[...]``); returns its :class:`AsyncHandle` at once.

        ``module`` is a path, bytes, ``sha256:HEX`` or a name (``NAME`` or
        ``NAME@VERSION``). Limits ask for less than the host's maximum,
        never more: ``fuel``, ``memory`` (bytes), ``timeout`` (seconds of
        wall time, sleeping counts), ``max_output`` (bytes of the result).
        ``retries`` retries ``task_error`` failures with exponential backoff
        (``backoff``, ``max_backoff`` seconds); ``countdown`` delays the
        call by that many seconds (in Redis, not here); ``queue`` picks the
        hosts (``wasq host run --queue``).

        Raises :class:`~wasq.InvalidCall` (args not a list or not
        JSON-serialisable, too large, a bad name or limit) before anything
        is queued, :class:`~wasq.ModuleNotFound` for an unknown name.
        """
        opts = Options(
            queue=queue,
            fuel=fuel,
            memory=memory,
            timeout=timeout,
            max_output=max_output,
            retries=retries,
            countdown=countdown,
            call_id=call_id,
            **options,
        )
        args_json = args_of(task_args, args)
        hex_hash = await self._run(resolve_ref(self._config.keys, module, self._config.settings))
        call = opts.build(hex_hash, task, args_json, self._config.max_args)
        await self._run(
            proto.submit(self._config.keys, [call], opts.countdown, self._config.settings)
        )
        return AsyncHandle(self, call[0]["id"])

    async def submit_many(
        self, module: ModuleRef, task: str, args_list: Iterable[Sequence[Any]], **options: Any
    ) -> List[AsyncHandle]:
        """Queues one call of ``task`` per args list, all in one round trip
        (256 calls per script), with the options of :meth:`submit`; returns
        their handles in order. Nothing is queued if one call is invalid."""
        opts = Options(**options)
        if opts.call_id is not None:
            raise InvalidCall("call_id names one call: submit_many gives each call its own id")
        encoded = [encode_args(a) for a in args_list]
        hex_hash = await self._run(resolve_ref(self._config.keys, module, self._config.settings))
        calls = [opts.build(hex_hash, task, a, self._config.max_args) for a in encoded]
        await self._run(
            proto.submit(self._config.keys, calls, opts.countdown, self._config.settings)
        )
        return [AsyncHandle(self, c["id"]) for c, _ in calls]

    async def call(
        self,
        module: ModuleRef,
        task: str,
        *task_args: Any,
        wait: Optional[float] = None,
        **options: Any,
    ) -> Any:
        """Submits a call and waits up to ``wait`` seconds (forever with
        ``None``) for its result, in one round trip to Redis when the result
        comes within 100 ms (as the Rust client's ``call``). Takes the
        options of :meth:`submit`; raises as :meth:`AsyncHandle.get`."""
        call_id, env = await self._submit_wait(module, task, task_args, wait, options)
        return value_of(call_id, env, wait)

    async def run(
        self,
        module: ModuleRef,
        task: str,
        *task_args: Any,
        wait: Optional[float] = None,
        **options: Any,
    ) -> Optional[Envelope]:
        """:meth:`call`, answering the final envelope (failed ones too)
        instead of raising; ``None`` if none came within ``wait``."""
        return (await self._submit_wait(module, task, task_args, wait, options))[1]

    async def _submit_wait(self, module, task, task_args, wait, options):  # type: ignore[no-untyped-def]
        args = options.pop("args", None)
        opts = Options(**options)
        args_json = args_of(task_args, args)
        hex_hash = await self._run(resolve_ref(self._config.keys, module, self._config.settings))
        call, call_json = opts.build(hex_hash, task, args_json, self._config.max_args)
        keys, settings = self._config.keys, self._config.settings
        if opts.countdown is not None:
            # Honoured in two steps, as the Rust client does.
            await self._run(proto.submit(keys, [(call, call_json)], opts.countdown, settings))
            return call["id"], await self._run(proto.wait(keys, call["id"], wait))
        return call["id"], await self._run(proto.submit_wait(keys, call, call_json, wait, settings))

    async def result(self, call_id: str, timeout: Optional[float] = None) -> Optional[Envelope]:
        """Waits up to ``timeout`` seconds for a call's final envelope;
        ``None`` if it did not finish in time. :class:`~wasq.UnknownCall`
        for an id never submitted (or expired)."""
        return await self._run(proto.wait(self._config.keys, call_id, timeout))

    async def results(
        self,
        handles: Iterable[Any],
        timeout: Optional[float] = None,
        *,
        return_exceptions: bool = False,
    ) -> List[Any]:
        """The results of many calls (handles or ids), in order, all within
        one ``timeout``: stored results are read 128 per round trip, and
        only the oldest call not done is waited on.

        A failed call raises its :class:`~wasq.TaskFailed` (and one not done
        in time :class:`~wasq.ResultTimeout`), unless ``return_exceptions``,
        which puts the exception in its place in the list instead.
        """
        ids = [getattr(h, "id", h) for h in handles]
        envs = await self.envelopes(ids, timeout)
        return values_of(ids, envs, timeout, return_exceptions)

    async def envelopes(
        self, handles: Iterable[Any], timeout: Optional[float] = None
    ) -> List[Optional[Envelope]]:
        """The final envelopes of many calls (``None`` for those not done
        within ``timeout``), as :meth:`results` waits for them."""
        ids = [getattr(h, "id", h) for h in handles]
        return await self._run(proto.wait_many(self._config.keys, ids, timeout))

    async def status(self, call_id: str) -> Optional[Envelope]:
        """The current envelope of a call, final or pending; ``None`` if unknown."""
        return await self._run(proto.status(self._config.keys, call_id))

    async def revoke(self, call_id: str) -> bool:
        """Revokes a call: a queued one ends ``revoked`` at once, a running
        one within a few ms. ``False`` if it is unknown or already final."""
        return await self._run(proto.revoke(self._config.keys, call_id, self._config.settings))

    def handle(self, call_id: str) -> AsyncHandle:
        """A handle of a call submitted elsewhere (by id)."""
        return AsyncHandle(self, call_id)
