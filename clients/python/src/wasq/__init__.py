"""Python client of wasq: run sandboxed WebAssembly tasks on wasq hosts.

:class:`Client` (blocking) and :class:`AsyncClient` (asyncio) submit calls
through the deployment's Redis with the Rust broker's own Lua scripts;
:class:`HostClient` calls one ``wasq serve`` host over HTTP::

    import wasq

    client = wasq.Client("redis://127.0.0.1:6379")
    handle = client.submit("target/tasks/examples.wasm", "add", 4, 5)
    assert handle.get(timeout=30) == 9

A failed call raises the :class:`TaskFailed` subclass of its error kind
(``FuelExhausted``, ``TaskTimeout``, ...), with ``kind``, ``message`` and
the result ``envelope``; a Redis that cannot be reached raises
:class:`BrokerUnavailable`; bad args raise :class:`InvalidCall`.

Layout:

- ``client.py``: :class:`Client` and :class:`Handle`;
- ``aio.py``: :class:`AsyncClient` and :class:`AsyncHandle`;
- ``host.py``: :class:`HostClient` (HTTP, stdlib only);
- ``_protocol.py``: the Redis protocol (keys, scripts, waiting), once for both clients;
- ``_calls.py``: calls built and checked as the Rust broker does;
- ``envelope.py``, ``errors.py``: the result envelope and the exceptions;
- ``lua/``: links to the Rust broker's scripts and its generated prelude (``sync_scripts.py``).
"""

from .aio import AsyncClient, AsyncHandle
from .client import Client, Handle
from .envelope import Envelope
from .errors import (
    BadInput,
    BrokerError,
    BrokerUnavailable,
    FuelExhausted,
    HostBusy,
    Integrity,
    InvalidCall,
    InvalidModule,
    InvalidName,
    Lost,
    MemoryLimit,
    ModuleNotFound,
    ModuleTooLarge,
    OutputLimit,
    ResultTimeout,
    Revoked,
    TaskError,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    Trap,
    UnknownCall,
    WasqError,
)
from .host import HostClient

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncHandle",
    "BadInput",
    "BrokerError",
    "BrokerUnavailable",
    "Client",
    "Envelope",
    "FuelExhausted",
    "Handle",
    "HostBusy",
    "HostClient",
    "Integrity",
    "InvalidCall",
    "InvalidModule",
    "InvalidName",
    "Lost",
    "MemoryLimit",
    "ModuleNotFound",
    "ModuleTooLarge",
    "OutputLimit",
    "ResultTimeout",
    "Revoked",
    "TaskError",
    "TaskFailed",
    "TaskNotFound",
    "TaskTimeout",
    "Trap",
    "UnknownCall",
    "WasqError",
]
