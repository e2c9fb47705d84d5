"""Calls built as the Rust broker builds them, without a server."""

from __future__ import annotations

import json
import time

import pytest

import wasq
from wasq import _calls
from wasq.envelope import Envelope


def test_call_json_has_the_rust_shape() -> None:
    call, text = _calls.build_call("ab" * 32, "add", "[4,5]", fuel=5, timeout=1.5, retries=2)
    assert list(json.loads(text)) == [
        "id",
        "module",
        "task",
        "args",
        "limits",
        "attempt",
        "submitted_ms",
        "retry",
        "queue",
    ]
    assert call["limits"] == {"fuel": 5, "timeout": 1.5}
    assert call["retry"] == {"retries": 2, "backoff": 0.2, "max_backoff": 60.0}
    _, plain = _calls.build_call("ab" * 32, "add", "[]")
    assert '"limits":{}' in plain and "retry" not in plain


def test_ids_are_ulids() -> None:
    a, b = _calls.new_call_id(), _calls.new_call_id()
    assert len(a) == 26 and a != b and _calls.is_valid_call_id(a)
    # The first ten characters are the time in ms.
    ms = 0
    for c in a[:10]:
        ms = ms * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(c)
    assert abs(ms - time.time() * 1000) < 60_000


def test_args_must_be_a_json_list() -> None:
    assert _calls.encode_args([4, "é", None]) == '[4,"é",null]'
    assert _calls.encode_args((1,)) == "[1]"
    for bad in (5, "x", {"a": 1}, None):
        with pytest.raises(wasq.InvalidCall, match="must be a list"):
            _calls.encode_args(bad)  # type: ignore[arg-type]
    for bad in ([object()], [float("inf")], ["\ud800"]):
        with pytest.raises(wasq.InvalidCall, match="JSON-serialisable"):
            _calls.encode_args(bad)


def test_hashes() -> None:
    hexed = "AB" * 32
    assert _calls.parse_hash("sha256:" + hexed) == hexed.lower()
    assert _calls.parse_hash(hexed) == hexed.lower()
    assert _calls.parse_hash("examples@1") is None


def test_envelopes_raise_their_kind() -> None:
    env = Envelope.from_json(
        '{"id":"x","state":"failed","result":null,"error":{"kind":"memory_limit","message":"m"},'
        '"stdout":"","stderr":"","logs":[],"fuel_used":0,"duration_ms":0,"attempt":1,"host":""}'
    )
    with pytest.raises(wasq.MemoryLimit) as raised:
        env.value()
    assert raised.value.envelope is env and raised.value.message == "m"
    unknown = Envelope(id="y", state="failed", error={"kind": "from_the_future", "message": "?"})
    assert type(unknown.failure()) is wasq.TaskFailed
    assert Envelope(id="z", state="succeeded", result=3).value() == 3
    with pytest.raises(wasq.BrokerError):
        Envelope.from_json(b"garbage")
