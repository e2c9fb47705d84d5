"""What the client says to Redis, written once for both clients.

Each operation is a generator that yields the commands of one round trip
(a list of :class:`Op`) and is sent back their replies (a value, or the
exception Redis answered, per command); its return value is the
operation's result. :func:`run_sync` (``Client``) and :func:`run_async`
(``AsyncClient``) send the round trips, so the protocol (key names,
script arguments, the order of reads in a wait) has one source, a port of
``broker/src/redis/calls.rs``, ``wait.rs`` and ``modules.rs``.

The scripts are the Rust broker's, shipped in ``wasq/lua/`` as the Rust
crate assembles them (prelude, ``common.lua``, body); a Rust test fails
when they differ. They run with ``EVALSHA``; a ``NOSCRIPT`` answer (a
restarted server) loads them and runs those commands again, as
``run_pipeline`` does in Rust.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from typing import Any, Dict, Generator, List, Optional, Sequence, Tuple

from redis import exceptions as rexc

from ._calls import check_module_ref, is_valid_call_id, is_valid_module_name, millis_capped
from .envelope import Envelope
from .errors import (
    BrokerError,
    BrokerUnavailable,
    InvalidName,
    ModuleNotFound,
    ModuleTooLarge,
    UnknownCall,
)

#: How long ``call`` first waits in the round trip that submits (as Rust's ``FIRST_WAIT``).
FIRST_WAIT = 0.1
#: Longest single ``XREAD BLOCK`` of a waiter, so a dead connection is noticed.
WAIT_CHUNK = 60.0
#: Stored results looked up per round trip when waiting for many.
PEEK_MANY = 128
#: Calls one submit script queues at most (a script blocks the server while it runs).
SUBMIT_CHUNK = 256
#: How long a wake-up stays, and the longest "published by" marker (seconds).
WAKE_TTL = 300.0
MARKER_TTL = 3600.0


class Script:
    """One of the Rust broker's scripts, as shipped in ``wasq/lua``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()


class Scripts:
    """The scripts the client runs, read from the package once."""

    def __init__(self) -> None:
        self.submit = Script("submit")
        self.listen = Script("listen")
        self.revoke = Script("revoke")


_SCRIPTS: Optional[Scripts] = None


def scripts() -> Scripts:
    """The shipped scripts."""
    global _SCRIPTS
    if _SCRIPTS is None:
        _SCRIPTS = Scripts()
    return _SCRIPTS


class Op:
    """One command of a round trip; a script's remembers its script so a
    ``NOSCRIPT`` can load it."""

    __slots__ = ("args", "script")

    def __init__(self, *args: Any, script: Optional[Script] = None) -> None:
        self.args = args
        self.script = script

    @staticmethod
    def eval(script: Script, keys: Sequence[str], args: Sequence[Any]) -> "Op":
        return Op("EVALSHA", script.sha, len(keys), *keys, *args, script=script)


Step = Generator[List[Op], List[Any], Any]


class Keys:
    """The key names of one deployment (``broker/src/redis/keys.rs``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def module(self, hex_hash: str) -> str:
        return f"{self.prefix}:module:{hex_hash}"

    def names(self) -> str:
        return f"{self.prefix}:names"

    def stream(self, queue: str) -> str:
        return f"{self.prefix}:{{q:{queue}}}:stream"

    def delayed(self, queue: str) -> str:
        return f"{self.prefix}:{{q:{queue}}}:delayed"

    def done(self, queue: str) -> str:
        return f"{self.prefix}:{{q:{queue}}}:done"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def result(self, call_id: str) -> str:
        return f"{self.prefix}:result:{call_id}"

    def wake(self, call_id: str) -> str:
        return f"{self.prefix}:wake:{call_id}"

    def revoked(self, call_id: str) -> str:
        return f"{self.prefix}:revoked:{call_id}"

    def events(self) -> str:
        return f"{self.prefix}:events"

    def queues(self) -> str:
        return f"{self.prefix}:queues"


class Settings:
    """What the Rust broker reads from its ``BrokerConfig``."""

    def __init__(self, result_ttl: float, lease: float, max_module: int) -> None:
        self.result_ttl = result_ttl
        self.lease = lease
        self.max_module = max_module

    def result_ttl_ms(self) -> int:
        return millis_capped(self.result_ttl)

    def marker_ttl_ms(self) -> int:
        ttl = MARKER_TTL if self.result_ttl <= 0 else min(self.result_ttl, MARKER_TTL)
        return max(int(ttl * 1000), 1)

    def state_ttl_ms(self, extra: float) -> int:
        if self.result_ttl <= 0:
            return 0
        return millis_capped(self.result_ttl + extra)


# ---- replies ---------------------------------------------------------------


def ok(reply: Any, what: str) -> Any:
    """The reply, or :class:`BrokerError` for an error Redis answered."""
    if isinstance(reply, Exception):
        raise BrokerError(f"{what}: {reply}")
    return reply


def text(value: Any) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None:
        return None
    return str(value)


def is_pending(state: Any) -> bool:
    return text(state) in ("queued", "running", "retrying")


NOTHING = "nothing"
BARE = "bare"


def woken(call_id: str, reply: Any) -> Any:
    """The final envelope an ``XREAD`` of a wake-up stream found; ``NOTHING``
    if none came, ``BARE`` for an entry without a usable envelope (read the
    stored result)."""
    if not reply:
        return NOTHING
    streams = reply.items() if isinstance(reply, dict) else reply
    for stream in streams:
        try:
            entries = stream[1]
            if isinstance(entries, list) and entries and isinstance(entries[0], list):
                entries = entries[0]  # RESP3 shapes of some redis-py versions
            for entry in entries:
                fields = entry[1]
                if isinstance(fields, (list, tuple)):
                    fields = dict(zip(fields[::2], fields[1::2]))
                raw = fields.get(b"env", fields.get("env"))
                if raw is None:
                    return BARE
                try:
                    env = Envelope.from_json(raw)
                except BrokerError:
                    return BARE
                if env.final and env.id == call_id:
                    return env
                return BARE
        except (IndexError, TypeError, AttributeError):
            return BARE
    return NOTHING


# ---- submitting ------------------------------------------------------------


def submit_ops(
    keys: Keys,
    calls: Sequence[Tuple[Dict[str, Any], str]],
    countdown: Optional[float],
    settings: Settings,
    waiting: bool,
) -> List[Op]:
    """The submit scripts of ``calls`` (already checked), one per queue and chunk."""
    by_queue: Dict[str, List[Tuple[Dict[str, Any], str]]] = {}
    for call, call_json in calls:
        by_queue.setdefault(call["queue"], []).append((call, call_json))
    countdown_ms = -1 if countdown is None else millis_capped(countdown)
    state_ttl = settings.state_ttl_ms(countdown or 0.0)
    ops = []
    for queue in sorted(by_queue):
        queued = by_queue[queue]
        for start in range(0, len(queued), SUBMIT_CHUNK):
            chunk = queued[start : start + SUBMIT_CHUNK]
            op_keys = [keys.stream(queue), keys.delayed(queue), keys.events(), keys.queues()]
            op_keys += [keys.call(call["id"]) for call, _ in chunk]
            args: List[Any] = [queue, state_ttl, countdown_ms, "1" if waiting else "0"]
            for call, call_json in chunk:
                args += [call_json, call["id"], call["attempt"], call["task"], call["submitted_ms"]]
            ops.append(Op.eval(scripts().submit, op_keys, args))
    return ops


def submit(
    keys: Keys,
    calls: Sequence[Tuple[Dict[str, Any], str]],
    countdown: Optional[float],
    settings: Settings,
) -> Step:
    """Queues ``calls`` in one round trip."""
    replies = yield submit_ops(keys, calls, countdown, settings, False)
    for reply in replies:
        ok(reply, "cannot submit calls")


def submit_wait(
    keys: Keys,
    call: Dict[str, Any],
    call_json: str,
    timeout: Optional[float],
    settings: Settings,
) -> Step:
    """Submits one call and waits for it: the submit script and a blocking
    read of its wake-up stream in one round trip (``submit_and_wait``)."""
    first = FIRST_WAIT if timeout is None else min(timeout, FIRST_WAIT)
    if first <= 0:
        yield from submit(keys, [(call, call_json)], None, settings)
        return (yield from wait(keys, call["id"], timeout))
    started = time.monotonic()
    ops = submit_ops(keys, [(call, call_json)], None, settings, True)
    ops.append(wake_read(keys, call["id"], first))
    replies = yield ops
    for reply in replies[:-1]:
        ok(reply, "cannot submit a call")
    found = woken(call["id"], ok(replies[-1], "cannot wait for a result"))
    if isinstance(found, Envelope):
        return found
    if found is BARE:
        return (yield from final_status(keys, call["id"]))
    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    return (yield from wait(keys, call["id"], left))


def revoke(keys: Keys, call_id: str, settings: Settings) -> Step:
    """Revokes a call (``revoke_call``); whether it was."""
    if not is_valid_call_id(call_id):
        return False
    for _ in range(3):
        (queue,) = yield [Op("HGET", keys.call(call_id), "queue")]
        queue = text(ok(queue, "cannot revoke a call")) or ""
        op = Op.eval(
            scripts().revoke,
            [
                keys.call(call_id),
                keys.result(call_id),
                keys.revoked(call_id),
                keys.wake(call_id),
                keys.events(),
                keys.done(queue),
                keys.stream(queue),
            ],
            [
                call_id,
                settings.result_ttl_ms(),
                settings.marker_ttl_ms(),
                int(WAKE_TTL * 1000),
                queue,
                max(int(settings.lease * 1000), 1),
            ],
        )
        (reply,) = yield [op]
        reply = ok(reply, "cannot revoke a call")
        if reply == -1:
            continue
        return reply == 1
    raise BrokerError(f"call {call_id} keeps changing queues")


# ---- waiting ---------------------------------------------------------------


def listen_op(keys: Keys, call_id: str) -> Op:
    return Op.eval(scripts().listen, [keys.call(call_id)], [])


def wake_read(keys: Keys, call_id: str, block: float) -> Op:
    return Op(
        "XREAD",
        "COUNT",
        1,
        "BLOCK",
        max(int(block * 1000), 1),
        "STREAMS",
        keys.wake(call_id),
        "0-0",
    )


def status(keys: Keys, call_id: str) -> Step:
    """The current envelope of a call (final or pending); ``None`` if unknown."""
    if not is_valid_call_id(call_id):
        return None
    result, state = yield [Op("GET", keys.result(call_id)), Op("HGETALL", keys.call(call_id))]
    result = ok(result, "cannot read a call's status")
    state = ok(state, "cannot read a call's status")
    if result is not None:
        try:
            return Envelope.from_json(result)
        except BrokerError as e:
            raise BrokerError(f"the result of {call_id} is not an envelope: {e}") from None
    return pending_envelope(call_id, state or {})


def pending_envelope(call_id: str, state: Dict[Any, Any]) -> Optional[Envelope]:
    fields = {text(k): text(v) for k, v in state.items()}
    name = fields.get("state")
    if name is None or name == "done":
        return None
    if name not in ("queued", "running", "retrying"):
        raise BrokerError(f"call {call_id} has an unknown state {name!r}")
    try:
        attempt = int(fields.get("attempt") or 0)
    except ValueError:
        attempt = 0
    if name == "retrying" and fields.get("last"):
        try:
            last = Envelope.from_json(fields["last"])
            last.state = "retrying"
            return last
        except BrokerError:
            pass
    env = Envelope(id=call_id, state=name, attempt=attempt)
    if name == "running":
        env.host = fields.get("host") or ""
    return env


def final_status(keys: Keys, call_id: str) -> Step:
    env = yield from status(keys, call_id)
    if env is None:
        raise UnknownCall(call_id)
    return env if env.final else None


def wait(keys: Keys, call_id: str, timeout: Optional[float]) -> Step:
    """Waits up to ``timeout`` seconds (forever with ``None``) for a call's
    final envelope; ``None`` if it did not come in time (``wait_for``)."""
    if not is_valid_call_id(call_id):
        raise UnknownCall(call_id)
    peek, state = yield [
        Op("XREAD", "COUNT", 1, "STREAMS", keys.wake(call_id), "0-0"),
        listen_op(keys, call_id),
    ]
    # A wake-up key holding garbage is overwritten when the result comes.
    found = NOTHING if isinstance(peek, Exception) else woken(call_id, peek)
    state = ok(state, "cannot wait for a result")
    if isinstance(found, Envelope):
        return found
    if found is BARE:
        return (yield from final_status(keys, call_id))
    if not is_pending(state):
        env = yield from status(keys, call_id)
        if env is None:
            raise UnknownCall(call_id)
        if env.final:
            return env
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        block = WAIT_CHUNK if deadline is None else min(deadline - time.monotonic(), WAIT_CHUNK)
        if block <= 0:
            break
        (read,) = yield [wake_read(keys, call_id, block)]
        found = woken(call_id, ok(read, "cannot wait for a result"))
        if isinstance(found, Envelope):
            return found
        if found is BARE:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        # A long wait: mark the call again, and stop if it is no longer pending.
        (state,) = yield [listen_op(keys, call_id)]
        if not is_pending(ok(state, "cannot wait for a result")):
            break
    return (yield from final_status(keys, call_id))


def wait_many(keys: Keys, ids: Sequence[str], timeout: Optional[float]) -> Step:
    """Waits for several calls within one ``timeout``: stored results are
    looked up many per round trip, and only the oldest call not done is
    blocked on (``wait_for_many``)."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    out: List[Optional[Envelope]] = [None] * len(ids)
    nxt = 0
    while nxt < len(ids):
        window = [i for i in range(nxt, len(ids)) if out[i] is None][:PEEK_MANY]
        valid = [i for i in window if is_valid_call_id(ids[i])]
        if valid:
            (stored,) = yield [Op("MGET", *[keys.result(ids[i]) for i in valid])]
            for i, raw in zip(valid, ok(stored, "cannot wait for results") or []):
                if raw is None:
                    continue
                try:
                    env = Envelope.from_json(raw)
                except BrokerError:
                    continue
                if env.final and env.id == ids[i]:
                    out[i] = env
        while nxt < len(ids) and out[nxt] is not None:
            nxt += 1
        if nxt == len(ids):
            break
        if window and nxt > window[-1]:
            continue
        env = yield from wait(keys, ids[nxt], left())
        if env is None:
            for i in range(nxt + 1, len(ids)):
                if out[i] is None:
                    out[i] = yield from wait(keys, ids[i], 0.0)
            break
        out[nxt] = env
        nxt += 1
    return out


# ---- modules ---------------------------------------------------------------


def upload(keys: Keys, data: bytes, settings: Settings) -> Step:
    """Stores module bytes under their sha256 unless stored already (looked
    up first, so a large module crosses the network once); ``sha256:HEX``."""
    if len(data) > settings.max_module:
        raise ModuleTooLarge(len(data), settings.max_module)
    hex_hash = hashlib.sha256(data).hexdigest()
    (exists,) = yield [Op("EXISTS", keys.module(hex_hash))]
    if not ok(exists, "cannot look up a module"):
        (stored,) = yield [Op("SET", keys.module(hex_hash), data, "NX")]
        ok(stored, "cannot store a module")
    return f"sha256:{hex_hash}"


def resolve_name(keys: Keys, name: str) -> Step:
    """The hex hash a module name points at; :class:`ModuleNotFound` if none."""
    check_module_ref(name)
    (found,) = yield [Op("HGET", keys.names(), name)]
    found = text(ok(found, "cannot resolve a module name"))
    if found is None:
        raise ModuleNotFound("module_not_found", f"no module named {name!r}")
    if len(found) != 64 or any(c not in "0123456789abcdefABCDEF" for c in found):
        raise BrokerError(f"module name {name} points at {found!r}")
    return found.lower()


def tag(keys: Keys, name: str, version: Optional[str], hex_hash: str) -> Step:
    """Points ``name`` (and ``name@version``) at a stored module."""
    for part in (name,) if version is None else (name, version):
        if not isinstance(part, str) or not is_valid_module_name(part):
            raise InvalidName(f"{part!r} is not a module name or version ([A-Za-z0-9_.-], 1-128)")
    (exists,) = yield [Op("EXISTS", keys.module(hex_hash))]
    if not ok(exists, "cannot look up a module"):
        raise ModuleNotFound("module_not_found", f"no module sha256:{hex_hash} is stored")
    fields: List[str] = [name, hex_hash]
    if version is not None:
        fields += [f"{name}@{version}", hex_hash]
    (done,) = yield [Op("HSET", keys.names(), *fields)]
    ok(done, "cannot tag a module")


# ---- drivers ---------------------------------------------------------------

_LINK_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)


def _unavailable(url: str, e: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"cannot reach redis at {url}: {e}")


def _reload(ops: List[Op], replies: List[Any]) -> Tuple[List[int], Dict[str, Script]]:
    again = [
        i
        for i, reply in enumerate(replies)
        if isinstance(reply, rexc.NoScriptError) and ops[i].script is not None
    ]
    load = {ops[i].script.name: ops[i].script for i in again}  # type: ignore[union-attr]
    return again, load


def send_sync(client: Any, url: str, ops: List[Op]) -> List[Any]:
    """One round trip; scripts the server lost are loaded and run again."""
    try:
        pipe = client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op.args)
        replies = pipe.execute(raise_on_error=False)
        again, load = _reload(ops, replies)
        if again:
            for script in load.values():
                client.script_load(script.source)
            pipe = client.pipeline(transaction=False)
            for i in again:
                pipe.execute_command(*ops[i].args)
            for i, reply in zip(again, pipe.execute(raise_on_error=False)):
                replies[i] = reply
        return replies
    except _LINK_ERRORS as e:
        raise _unavailable(url, e) from e


async def send_async(client: Any, url: str, ops: List[Op]) -> List[Any]:
    """:func:`send_sync` on ``redis.asyncio``."""
    try:
        pipe = client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op.args)
        replies = await pipe.execute(raise_on_error=False)
        again, load = _reload(ops, replies)
        if again:
            for script in load.values():
                await client.script_load(script.source)
            pipe = client.pipeline(transaction=False)
            for i in again:
                pipe.execute_command(*ops[i].args)
            for i, reply in zip(again, await pipe.execute(raise_on_error=False)):
                replies[i] = reply
        return replies
    except _LINK_ERRORS as e:
        raise _unavailable(url, e) from e


def run_sync(client: Any, url: str, step: Step) -> Any:
    """Runs an operation to its end on a blocking client."""
    try:
        ops = next(step)
        while True:
            ops = step.send(send_sync(client, url, ops))
    except StopIteration as done:
        return done.value


async def run_async(client: Any, url: str, step: Step) -> Any:
    """Runs an operation to its end on an asyncio client."""
    try:
        ops = next(step)
        while True:
            ops = step.send(await send_async(client, url, ops))
    except StopIteration as done:
        return done.value
