"""Client against a real redis-server and real `wasq host run` processes."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import redis

import wasq
from conftest import free_port


def test_submit_and_get(client: wasq.Client, module: str) -> None:
    handle = client.submit(module, "add", 4, 5)
    assert isinstance(handle, wasq.Handle)
    assert handle.get(timeout=30) == 9
    env = handle.envelope(timeout=0)
    assert env is not None and env.state == "succeeded" and env.result == 9
    assert env.id == handle.id and env.attempt == 1 and env.host


def test_module_as_path_bytes_and_hash(client: wasq.Client, examples, module: str) -> None:
    assert client.call(examples, "add", 1, 2, wait=30) == 3
    assert client.call(str(examples), "add", 1, 3, wait=30) == 4
    assert client.call(examples.read_bytes(), "add", 1, 4, wait=30) == 5
    assert client.call(module[len("sha256:") :], "add", 1, 5, wait=30) == 6
    assert client.call(module, "hello", wait=30) == "hello from wasq"


def test_args_keyword_and_structured_results(client: wasq.Client, module: str) -> None:
    report = client.call(module, "process_file", args=["a.txt", "one two\nthree"], wait=30)
    assert report["name"] == "a.txt" and report["lines"] == 2 and report["words"] == 3
    counts = client.call(module, "word_count", "the cat the hat", wait=30)
    assert counts == {"cat": 1, "hat": 1, "the": 2}


def test_call_answers_envelopes_with_logs(client: wasq.Client, module: str) -> None:
    env = client.run(module, "process_file", "b.txt", "x y", wait=30)
    assert env is not None and env.succeeded and env.fuel_used > 0
    assert any("processed b.txt" in line["message"] for line in env.logs)


def failure(client: wasq.Client, module: str, task: str, *args, **options) -> wasq.TaskFailed:
    with pytest.raises(wasq.TaskFailed) as raised:
        client.call(module, task, *args, wait=30, **options)
    e = raised.value
    assert e.envelope is not None and e.envelope.state == "failed"
    assert e.kind == e.envelope.error["kind"] and e.message == e.envelope.error["message"]
    return e


def test_task_error(client: wasq.Client, module: str) -> None:
    e = failure(client, module, "fib", 100)
    assert isinstance(e, wasq.TaskError) and e.kind == "task_error"
    assert "at most 93" in e.message


def test_bad_input(client: wasq.Client, module: str) -> None:
    e = failure(client, module, "add", "four", 5)
    assert isinstance(e, wasq.BadInput) and e.kind == "bad_input"


def test_fuel_exhausted(client: wasq.Client, module: str) -> None:
    e = failure(client, module, "fib", 30, fuel=100_000)
    assert isinstance(e, wasq.FuelExhausted) and e.kind == "fuel_exhausted"
    assert e.envelope.fuel_used > 0


def test_timeout_of_the_call(client: wasq.Client, module: str) -> None:
    started = time.monotonic()
    e = failure(client, module, "long_processing", "slow", 20, timeout=0.3)
    assert isinstance(e, wasq.TaskTimeout) and e.kind == "timeout"
    assert time.monotonic() - started < 10


def test_task_not_found(client: wasq.Client, module: str) -> None:
    e = failure(client, module, "no_such_task")
    assert isinstance(e, wasq.TaskNotFound) and e.kind == "task_not_found"


def test_module_not_found(client: wasq.Client) -> None:
    missing = "sha256:" + "ab" * 32
    e = failure(client, missing, "add", 1, 2)
    assert isinstance(e, wasq.ModuleNotFound) and e.kind == "module_not_found"
    # A name nobody tagged is refused before anything is queued.
    with pytest.raises(wasq.ModuleNotFound) as raised:
        client.submit("no-such-module@1", "add", 1, 2)
    assert raised.value.envelope is None


def test_get_times_out_and_the_call_goes_on(client: wasq.Client, module: str) -> None:
    handle = client.submit(module, "long_processing", "later", 1.0)
    started = time.monotonic()
    with pytest.raises(wasq.ResultTimeout) as raised:
        handle.get(timeout=0.2)
    waited = time.monotonic() - started
    assert 0.15 <= waited < 2, waited
    assert raised.value.id == handle.id
    assert isinstance(raised.value, TimeoutError)
    assert handle.get(timeout=30) == "processed later"
    with pytest.raises(wasq.ResultTimeout):
        client.call(module, "long_processing", "x", 2.0, wait=0.05)


def test_countdown_waits_in_redis(client: wasq.Client, module: str) -> None:
    started = time.monotonic()
    handle = client.submit(module, "add", 2, 2, countdown=0.5)
    assert handle.status().state == "queued"
    assert handle.get(timeout=30) == 4
    assert time.monotonic() - started >= 0.45


def test_retries_end_in_the_last_attempt(client: wasq.Client, module: str) -> None:
    with pytest.raises(wasq.TaskError) as raised:
        client.call(module, "process_file", "c.txt", "t", 100, retries=2, backoff=0.01, wait=30)
    assert raised.value.envelope.attempt == 3


def test_revoke_a_delayed_call(client: wasq.Client, module: str) -> None:
    handle = client.submit(module, "add", 1, 1, countdown=60)
    assert handle.revoke() is True
    with pytest.raises(wasq.Revoked) as raised:
        handle.get(timeout=5)
    assert raised.value.envelope.state == "revoked"
    assert handle.revoke() is False


def test_many_calls(client: wasq.Client, module: str) -> None:
    handles = client.submit_many(module, "add", [[i, i] for i in range(200)])
    assert client.results(handles, timeout=60) == [2 * i for i in range(200)]
    one_by_one = [client.submit(module, "add", i, 1) for i in range(50)]
    assert [h.get(timeout=60) for h in one_by_one] == [i + 1 for i in range(50)]


def test_results_with_failures(client: wasq.Client, module: str) -> None:
    handles = [client.submit(module, "fib", n) for n in (10, 100, 20)]
    with pytest.raises(wasq.TaskError):
        client.results(handles, timeout=30)
    got = client.results(handles, timeout=30, return_exceptions=True)
    assert got[0] == 55 and got[2] == 6765
    assert isinstance(got[1], wasq.TaskError)
    slow = client.submit(module, "long_processing", "s", 2.0)
    got = client.results([handles[0], slow], timeout=0.1, return_exceptions=True)
    assert got[0] == 55 and isinstance(got[1], wasq.ResultTimeout)


def test_bad_args_are_refused_before_queueing(client: wasq.Client, module: str) -> None:
    with pytest.raises(wasq.InvalidCall, match="JSON-serialisable"):
        client.submit(module, "add", object(), 1)
    with pytest.raises(wasq.InvalidCall, match="JSON-serialisable"):
        client.submit(module, "add", float("nan"), 1)
    with pytest.raises(wasq.InvalidCall, match="must be a list"):
        client.submit(module, "add", args={"x": 1})
    with pytest.raises(wasq.InvalidCall, match="must be a list"):
        client.submit(module, "add", args="4, 5")
    with pytest.raises(wasq.InvalidCall, match="not both"):
        client.submit(module, "add", 1, args=[2])
    with pytest.raises(wasq.InvalidCall, match="task name"):
        client.submit(module, "not-a-task", 1)
    with pytest.raises(wasq.InvalidName):
        client.submit(module, "add", 1, 2, queue="a{b}")
    with pytest.raises(wasq.InvalidCall, match="fuel"):
        client.submit(module, "add", 1, 2, fuel=-1)
    with pytest.raises(wasq.InvalidCall, match="over the limit"):
        client.submit(module, "sha256", "x" * (1024 * 1024 + 1))
    with pytest.raises(wasq.InvalidCall, match="no such file"):
        client.submit("missing/examples.wasm", "add", 1, 2)
    assert isinstance(wasq.InvalidCall("x"), ValueError)


def test_unknown_call(client: wasq.Client) -> None:
    with pytest.raises(wasq.UnknownCall):
        client.result("01NOSUCHCALL", timeout=0.1)
    assert client.status("01NOSUCHCALL") is None


def test_upload_is_write_once_and_size_checked(deployment, examples) -> None:
    url = deployment.redis.url
    with wasq.Client(url, deployment.prefix, max_module=1000) as small:
        with pytest.raises(wasq.ModuleTooLarge):
            small.upload(examples)
    with wasq.Client(url, deployment.prefix) as c:
        ref = c.upload(b"\0asm\x01\0\0\0")
        assert c.upload(b"\0asm\x01\0\0\0") == ref
        raw = redis.Redis.from_url(url)
        assert raw.get(f"{deployment.prefix}:module:{ref[7:]}") == b"\0asm\x01\0\0\0"


def test_queues_are_what_the_rust_broker_writes(deployment, module: str) -> None:
    # A call on a queue no host serves waits in that queue's stream, as the
    # Rust broker would have queued it.
    with wasq.Client(deployment.redis.url, deployment.prefix) as c:
        handle = c.submit(module, "add", 1, 2, queue="nobody-serves-this", fuel=10**6, timeout=1.5)
        raw = redis.Redis.from_url(deployment.redis.url)
        entries = raw.xrange(f"{deployment.prefix}:{{q:nobody-serves-this}}:stream")
        call = json.loads(entries[-1][1][b"call"])
        assert call["id"] == handle.id and call["queue"] == "nobody-serves-this"
        assert call["limits"] == {"fuel": 1000000, "timeout": 1.5}
        assert call["args"] == [1, 2] and call["module"] == module[7:]
        assert handle.status().state == "queued"
        assert handle.revoke() is True


def test_scripts_come_back_after_a_script_flush(deployment, module: str) -> None:
    raw = redis.Redis.from_url(deployment.redis.url)
    with wasq.Client(deployment.redis.url, deployment.prefix) as c:
        raw.script_flush()
        assert c.call(module, "add", 20, 22, wait=30) == 42
        raw.script_flush()
        assert c.submit(module, "add", 1, 1).get(timeout=30) == 2


def test_redis_unreachable(module: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}"
    with wasq.Client(url, "nobody", connect_timeout=1) as c:
        started = time.monotonic()
        with pytest.raises(wasq.BrokerUnavailable) as raised:
            c.submit(module, "add", 1, 2)
        assert url in str(raised.value)
        with pytest.raises(wasq.BrokerUnavailable):
            c.result("01ANY", timeout=1)
        with pytest.raises(wasq.BrokerUnavailable):
            c.upload(b"\0asm\x01\0\0\0")
        assert time.monotonic() - started < 30


def test_the_readme_example(client: wasq.Client, examples) -> None:
    # The README's Celery-style example: ten files, then .get(timeout=30) each.
    module = client.upload(str(examples))
    files = {f"file{i}.txt": f"line one of {i}\nline two" for i in range(10)}
    handles = [client.submit(module, "process_file", name, text) for name, text in files.items()]
    reports = [handle.get(timeout=30) for handle in handles]
    assert [r["name"] for r in reports] == list(files)
    assert reports[0] == {
        "name": "file0.txt",
        "lines": 2,
        "words": 6,
        "sha256": hashlib.sha256(files["file0.txt"].encode()).hexdigest(),
    }


def test_call_is_one_round_trip_when_the_result_comes_quickly(
    client: wasq.Client, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The submit script and the blocking read of the wake-up go together, as
    # Rust's submit_wait does: one round trip when the result comes within
    # 100 ms (a loaded machine may need a few tries).
    from wasq import _protocol

    trips = []
    send = _protocol.send_sync

    def counting(*a):  # type: ignore[no-untyped-def]
        trips.append(len(a[2]))
        return send(*a)

    monkeypatch.setattr(_protocol, "send_sync", counting)
    counts = []
    for i in range(10):
        trips.clear()
        assert client.call(module, "add", i, 1, wait=30) == i + 1
        counts.append(list(trips))
        if trips == [2]:
            break
    assert [2] in counts, counts


def test_resp3_replies(deployment, module: str) -> None:
    if int(redis.__version__.split(".")[0]) < 5:
        pytest.skip("RESP3 needs redis-py 5 or newer")
    with wasq.Client(deployment.redis.url, deployment.prefix, protocol=3) as c:
        assert c.call(module, "add", 3, 4, wait=30) == 7
        handles = c.submit_many(module, "add", [[i, 0] for i in range(20)])
        assert c.results(handles, timeout=30) == list(range(20))
        slow = c.submit(module, "long_processing", "r", 0.3)
        assert slow.get(timeout=30) == "processed r"
        assert slow.status().state == "succeeded"
