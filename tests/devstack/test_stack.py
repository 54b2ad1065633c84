"""The local stack is real: bytes go through the broker and Redis unchanged, a third-party client
(kcat) interoperates, and no server outlives an interrupted or killed launcher."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Message, Producer

from devstack.redis_server import RedisServer
from devstack.server_process import sweep_stale_run_dirs

REPO_ROOT = Path(__file__).resolve().parents[2]


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
    """Read ``expected`` records of ``topic`` from the beginning within ``timeout`` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(received) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received.append(msg)
    finally:
        consumer.close()
    assert len(received) == expected, f"got {len(received)} of {expected} records in {timeout} s"
    return received


@pytest.mark.kafka
def test_kafka_round_trip_keeps_bytes_and_per_key_order(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    sent = [
        (f"user-{i % 7}".encode(), bytes([i % 256]) + f"event-{i}".encode()) for i in range(200)
    ]
    for key, value in sent:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    received = _consume(kafka_bootstrap, topic, len(sent))

    by_key: dict[bytes, list[bytes]] = {}
    for msg in received:
        by_key.setdefault(msg.key() or b"", []).append(msg.value() or b"")
    expected: dict[bytes, list[bytes]] = {}
    for key, value in sent:
        expected.setdefault(key, []).append(value)
    assert by_key == expected  # same bytes, and each key's records in production order
    assert len({msg.partition() for msg in received}) > 1  # keys really spread over partitions


@pytest.mark.redis
def test_redis_read_write(redis_client: redis.Redis, namespace: str) -> None:
    key = f"{namespace}:blob"
    payload = bytes(range(256))
    redis_client.set(key, payload)
    redis_client.hset(f"{namespace}:hash", mapping={b"views": b"3", b"spend": b"12.5"})
    pipe = redis_client.pipeline()
    pipe.get(key)
    pipe.hgetall(f"{namespace}:hash")
    blob, fields = pipe.execute()
    assert blob == payload
    assert fields == {b"views": b"3", b"spend": b"12.5"}


@pytest.mark.redis
def test_namespace_keys_are_isolated(redis_client: redis.Redis, namespace: str) -> None:
    other = f"t-{uuid.uuid4().hex[:8]}"
    redis_client.set(f"{namespace}:k", b"mine")
    assert redis_client.get(f"{other}:k") is None
    assert namespace.startswith("t-") and len(namespace) == 10


def test_redis_restart_comes_back_empty_at_the_same_url() -> None:
    with RedisServer() as server:
        url, pid = server.url, server.pid
        client = server.client()
        client.set("k", b"v")
        server.restart()
        assert server.url == url and server.pid != pid
        assert client.dbsize() == 0  # the same client reconnects: same port, empty dataset
        server.halt()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        server.resume()
        assert client.ping()
    assert server.run_dir is None  # stop removed its temp dir


def test_tls_redis_serves_only_tls_with_a_certificate_for_every_loopback_name() -> None:
    with RedisServer(tls=True) as server:
        certs = server.certificates
        assert certs is not None and server.url.startswith("rediss://127.0.0.1:")
        assert certs.directory.is_relative_to(server.run_dir or Path("/nonexistent"))
        # The host name is verified (redis-py's default): by address and by name.
        for host in ("127.0.0.1", "localhost"):
            url = server.url.replace("127.0.0.1", host)
            assert redis.Redis.from_url(url, ssl_ca_certs=str(certs.ca_cert)).ping()
        assert server.client().config_get("port") == {"port": "0"}  # no plaintext listener
        server.restart()  # same certificate files, same URL
        assert redis.Redis.from_url(server.url, ssl_ca_certs=str(certs.ca_cert)).ping()
        run_dir = server.run_dir
    assert run_dir is not None and not run_dir.exists()  # throwaway keys deleted with it
    assert server.certificates is None


@pytest.mark.kafka
def test_kcat_produced_bytes_read_back_exactly(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed: run `make setup`"
    topic = new_topic()
    # kcat splits records on newlines and the key from the value at the first ':'; all other
    # bytes (NUL, invalid UTF-8, more colons) pass through untouched.
    stdin = (
        b'user-1:{"type":"view","amount":1}\n'
        b"user-\xc3\xa9:\x00\x01\xfe\xff binary \xe2\x82\xac\n"
        b"u:2:value\n"
    )
    done = subprocess.run(
        [kcat, "-P", "-b", kafka_bootstrap, "-t", topic, "-K:"],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")

    received = _consume(kafka_bootstrap, topic, 3)

    assert [(msg.key(), msg.value()) for msg in received] == [
        (b"user-1", b'{"type":"view","amount":1}'),
        (b"user-\xc3\xa9", b"\x00\x01\xfe\xff binary \xe2\x82\xac"),
        (b"u", b"2:value"),
    ]


# --- no server outlives its launcher ---------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    comm: str
    start_ticks: int  # start time since boot in clock ticks: tells pid reuse apart
    cwd: str  # the server's scratch dir (the stack runs each server inside its own)


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, ppid, start ticks) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> list[_Proc]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            children.setdefault(info[2], []).append(int(entry.name))
    found: list[_Proc] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        info = _stat(pid)
        if info is None:
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        found.append(_Proc(pid, info[0], info[3], cwd))
        todo.extend(children.get(pid, []))
    return found


def _still_running(proc: _Proc) -> bool:
    info = _stat(proc.pid)
    # A zombie is dead: only its exit status waits for a parent (maybe init) to collect it.
    return info is not None and info[3] == proc.start_ticks and info[1] not in ("Z", "X")


@pytest.fixture
def devstack_up() -> Iterator[subprocess.Popen[bytes]]:
    """A ``python -m devstack up`` subprocess that has printed its export lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEG_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        output = b""
        # Unbuffered reads: a buffered readline could swallow the second line out of select's view.
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 120
            while output.count(b"\n") < 2 and time.monotonic() < deadline:
                if selector.select(timeout=1.0):
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break  # EOF: it died
                    output += chunk
        names = [line.split(b"=")[0] for line in output.splitlines()]
        assert names == [
            b"export STREAMSEG_KAFKA__BOOTSTRAP_SERVERS",
            b"export STREAMSEG_REDIS__URL",
        ], f"devstack up printed {output!r}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # the orderly stop also deletes its temp dirs; SIGKILL would not
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate(timeout=30)


def _assert_all_gone(servers: list[_Proc], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_still_running(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in servers if _still_running(p)]
    assert not left, f"still running after the launcher ended: {left}"


@pytest.mark.slow
def test_sigint_stops_servers_and_removes_temp_dirs(devstack_up: subprocess.Popen[bytes]) -> None:
    servers = _descendants(devstack_up.pid)
    assert {"java", "redis-server"} <= {p.comm for p in servers}, servers
    assert all(Path(p.cwd).is_dir() for p in servers)

    devstack_up.send_signal(signal.SIGINT)
    assert devstack_up.wait(timeout=60) == 0

    _assert_all_gone(servers)
    assert not [p.cwd for p in servers if Path(p.cwd).exists()], "temp dirs left behind"


@pytest.mark.slow
def test_sigkill_of_launcher_kills_servers(devstack_up: subprocess.Popen[bytes]) -> None:
    servers = _descendants(devstack_up.pid)
    assert {"java", "redis-server"} <= {p.comm for p in servers}, servers

    devstack_up.kill()  # no Python code runs: only PR_SET_PDEATHSIG can take the servers down
    devstack_up.wait(timeout=30)

    _assert_all_gone(servers, timeout=10.0)
    sweep_stale_run_dirs()  # what the next stack start would do with the orphaned temp dirs
    assert not [p.cwd for p in servers if Path(p.cwd).exists()]
