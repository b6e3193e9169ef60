"""MLLP framing and listener: real sockets on 127.0.0.1, the server in a background event loop.

Framing per the HL7 MLLP release 2 transport spec: <VT>=0x0B message <FS><CR>=0x1C 0x0D.
Expected values are built here from the messages the tests send, never taken from the code.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthhub.ingest.mllp import Frame, FrameParser, MllpServer, send

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
LOGGER = "healthhub.mllp"


def message(n: int, filler: int = 0) -> bytes:
    """An ORU^R01 whose MSH-10 is MSG<n>, padded with an OBX of ``filler`` characters."""
    return (f"MSH|^~\\&|LAB|HOSP|HH|HUB|20240101120000||ORU^R01|MSG{n:05d}|P|2.5.1\r"
            f"PID|1||{n}^^^HOSP^MR||DOE^JANE\r"
            f"OBX|1|TX|NOTE||{'A' * filler}\r").encode()


def framed(data: bytes) -> bytes:
    return VT + data + FS + CR


def control_id(data: bytes) -> bytes:
    return data.split(b"\r", 1)[0].split(b"|")[9]


def ack_for(data: bytes) -> bytes:
    return b"MSH|^~\\&|HH|HUB|LAB|HOSP|||ACK|A" + control_id(data) + b"|P|2.5.1\rMSA|AA|" + control_id(data) + b"\r"


class Recorder:
    """A handler that records every frame it gets and answers ack_for(data)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.frames: list[Frame] = []
        self.delay = delay
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, frame: Frame) -> bytes:
        with self.lock:
            self.frames.append(frame)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        return ack_for(frame.data)


class Running:
    """An MllpServer on an ephemeral port, its event loop in a background thread."""

    def __init__(self, handler: Callable[[Frame], bytes], **options: Any) -> None:
        self.server = MllpServer(handler, port=0, **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self, messages: list[bytes], timeout: float = 10) -> list[bytes]:
        return send("127.0.0.1", self.server.port, messages, timeout=timeout)


@contextmanager
def running(handler: Callable[[Frame], bytes], **options: Any) -> Iterator[Running]:
    r = Running(handler, **options)
    r.thread.start()
    try:
        r.call(r.server.start())
        yield r
    finally:
        try:
            r.call(r.server.stop(), 15)
        finally:
            r.loop.call_soon_threadsafe(r.loop.stop)
            r.thread.join(5)
            r.loop.close()


def read_acks(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` framed ACKs with a regex of its own (independent of FrameParser)."""
    buf = b""
    while buf.count(FS + CR) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return re.findall(rb"\x0b(.*?)\x1c\r", buf, re.S)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Wait until the server closes ``sock`` (EOF or reset)."""
    ready, _, _ = select.select([sock], [], [], within)
    if not ready:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionError:
        return True


def wait_until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- the framing, without sockets ---------------------------------------------------------

def test_parser_one_byte_at_a_time() -> None:
    messages = [message(i) for i in range(3)]
    stream = b"".join(framed(m) for m in messages)
    parser = FrameParser("p:1")
    frames = [f for i in range(len(stream)) for f in parser.feed(stream[i:i + 1])]
    assert [f.data for f in frames] == messages
    assert [(f.size, f.truncated, f.peer) for f in frames] == [(len(m), False, "p:1") for m in messages]
    assert parser.stats.garbage_bytes == 0 and not parser.in_frame


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_parser_random_splits_and_garbage(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 5))
    messages = [message(i, data.draw(st.integers(0, 300))) for i in range(count)]
    # Garbage: any bytes but <VT> (a <VT> would start a block), e.g. a stray <FS><CR>.
    garbage_bytes = st.binary(max_size=20).map(lambda b: b.replace(VT, b"?"))
    garbage = [data.draw(garbage_bytes) for _ in range(count + 1)]
    stream = garbage[0] + b"".join(framed(m) + g for m, g in zip(messages, garbage[1:], strict=True))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=40))))
    parser = FrameParser()
    frames: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += parser.feed(stream[a:b])
    assert [f.data for f in frames] == messages
    assert parser.stats.garbage_bytes == sum(map(len, garbage))
    assert parser.close() == 0


def test_parser_several_frames_in_one_chunk() -> None:
    messages = [message(i) for i in range(4)]
    frames = FrameParser().feed(b"".join(framed(m) for m in messages))
    assert [f.data for f in frames] == messages


def test_garbage_is_discarded_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    m1, m2 = message(1), message(2)
    parser = FrameParser("10.0.0.7:5000")
    stream = b"junk" + framed(m1) + FS + CR + b"noise" + framed(m2) + b"tail"
    frames = parser.feed(stream)
    assert [f.data for f in frames] == [m1, m2]
    assert parser.close() == 0
    assert parser.stats.garbage_bytes == len(b"junk") + 2 + len(b"noise") + len(b"tail")
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert [msg for msg in logged if "outside a block" in msg and "10.0.0.7:5000" in msg] != []
    counts = re.findall(r"discarded (\d+) bytes outside", "\n".join(logged))
    assert sum(map(int, counts)) == parser.stats.garbage_bytes


def test_start_block_inside_a_block_restarts_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    m = message(7)
    parser = FrameParser()
    frames = parser.feed(VT + b"MSH|^~\\&|half a message") + parser.feed(framed(m))
    assert [f.data for f in frames] == [m]
    assert parser.stats.aborted_frames == 1
    assert any("start block inside a block" in r.getMessage() for r in caplog.records)


def test_end_block_split_across_chunks_and_lone_fs_is_data() -> None:
    parser = FrameParser()
    assert parser.feed(VT + b"ab" + FS) == []
    assert [f.data for f in parser.feed(CR)] == [b"ab"]
    assert parser.feed(VT + b"ab" + FS) == []
    assert [f.data for f in parser.feed(b"c" + FS + CR)] == [b"ab\x1cc"]
    assert [f.data for f in parser.feed(VT + b"x" + FS + b"y" + FS + CR)] == [b"x\x1cy"]


def test_oversized_block_is_truncated_without_buffering_it() -> None:
    big = message(1, 1000)
    parser = FrameParser(max_message=64)
    stream = framed(big) + framed(message(2))
    frames: list[Frame] = []
    for i in range(0, len(stream), 7):
        frames += parser.feed(stream[i:i + 7])
        assert parser.buffered <= 64
    assert [(f.data, f.truncated, f.size) for f in frames] == [(big[:64], True, len(big)),
                                                              (message(2)[:64], True, len(message(2)))]
    ok = FrameParser(max_message=len(big)).feed(framed(big))
    assert [(f.data, f.truncated, f.size) for f in ok] == [(big, False, len(big))]


def test_close_mid_block_drops_it() -> None:
    parser = FrameParser()
    assert parser.feed(VT + b"MSH|partial") == []
    assert parser.close() == len(b"MSH|partial")
    assert parser.stats.aborted_frames == 1


# --- the listener over real sockets -------------------------------------------------------

def test_fifty_concurrent_connections_get_their_acks_in_order() -> None:
    handler = Recorder(delay=0.005)
    with running(handler, workers=8) as r:
        batches = [[message(c * 100 + i) for i in range(5)] for c in range(50)]
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(r.send, batches))
        assert results == [[ack_for(m) for m in batch] for batch in batches]
        # an ACK is counted once written and drained: the client may read it a moment before
        wait_until(lambda: r.server.stats.acks == 250)
        assert r.server.stats.messages == 250
    assert sorted(f.data for f in handler.frames) == sorted(m for batch in batches for m in batch)
    assert 1 < handler.max_active <= 8  # connections ran in parallel, within the pool


def test_byte_at_a_time_and_many_frames_per_segment() -> None:
    handler = Recorder()
    with running(handler) as r, r.connect() as sock:
        m1, m2 = message(1), message(2)
        for byte in b"\x00garbage" + framed(m1) + framed(m2):
            sock.sendall(bytes([byte]))
        assert read_acks(sock, 2) == [ack_for(m1), ack_for(m2)]
        batch = [message(i) for i in range(10, 15)]
        sock.sendall(b"".join(framed(m) for m in batch))
        assert read_acks(sock, 5) == [ack_for(m) for m in batch]
        rng = random.Random(7)
        stream = b"".join(framed(message(i, rng.randrange(5000))) for i in range(20, 25))
        cuts = sorted(rng.sample(range(1, len(stream)), 30))
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            sock.sendall(stream[a:b])
        assert len(read_acks(sock, 5)) == 5
        host, port = sock.getsockname()[:2]
        peer = f"{host}:{port}"
    assert {f.peer for f in handler.frames} == {peer}
    assert [control_id(f.data) for f in handler.frames] == [b"MSG%05d" % i for i in [1, 2, *range(10, 15), *range(20, 25)]]
    assert r.server.stats.garbage_bytes == len(b"\x00garbage")


def test_twenty_megabyte_message_is_accepted_whole() -> None:
    seen: list[tuple[int, bool, int, str]] = []

    def handler(frame: Frame) -> bytes:
        seen.append((len(frame.data), frame.truncated, frame.size, hashlib.sha256(frame.data).hexdigest()))
        return b"MSA|AA|BIG\r"

    big = message(1, 20 * 1024 * 1024)
    with running(handler) as r:
        assert r.send([big], timeout=20) == [b"MSA|AA|BIG\r"]
    assert seen == [(len(big), False, len(big), hashlib.sha256(big).hexdigest())]


def test_oversized_message_reaches_the_handler_truncated() -> None:
    handler = Recorder()
    big, small = message(1, 5000), message(2)
    with running(handler, max_message=200) as r:
        assert r.send([big, small]) == [ack_for(big), ack_for(small)]
    first, second = handler.frames
    assert (first.data, first.truncated, first.size) == (big[:200], True, len(big))
    assert (second.data, second.truncated, second.size) == (small, False, len(small))


def test_idle_connection_is_closed() -> None:
    with running(Recorder(), idle_timeout=0.5) as r, r.connect() as sock:
        t0 = time.monotonic()
        assert closed_by_server(sock, 6)
        assert 0.4 < time.monotonic() - t0 < 5  # the upper bound only says "it did time out" (a busy machine is slow)
        assert r.server.stats.timeouts == 1


def test_slow_loris_block_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    handler = Recorder()
    with running(handler, idle_timeout=0.5) as r, r.connect() as sock:
        t0 = time.monotonic()
        sock.sendall(VT)
        closed = False
        while not closed and time.monotonic() - t0 < 6:
            try:
                sock.sendall(b"x")  # a byte every 0.1 s: never idle for 0.5 s
            except ConnectionError:
                closed = True
            closed = closed or closed_by_server(sock, 0.1)
        elapsed = time.monotonic() - t0
        assert closed and 0.4 < elapsed < 5
        wait_until(lambda: r.server.stats.aborted_frames == 1)
        assert r.server.stats.timeouts == 1
    assert handler.frames == []
    assert any("block not complete" in rec.getMessage() for rec in caplog.records)


def test_disconnect_mid_block_hands_nothing_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    handler = Recorder()
    with running(handler) as r:
        with r.connect() as sock:
            sock.sendall(VT + message(1)[:40])
            port = sock.getsockname()[1]
        wait_until(lambda: r.server.stats.aborted_frames == 1)
        assert r.send([message(2)]) == [ack_for(message(2))]
    assert [f.data for f in handler.frames] == [message(2)]
    assert any(f"127.0.0.1:{port}" in rec.getMessage() and "mid-block" in rec.getMessage() for rec in caplog.records)


def test_disconnect_after_a_whole_block_still_runs_the_handler(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client_gone, handled = threading.Event(), threading.Event()

    def handler(frame: Frame) -> bytes:
        assert client_gone.wait(5)
        handled.set()
        return ack_for(frame.data)

    with running(handler) as r:
        with r.connect() as sock:
            sock.sendall(framed(message(1)))
            wait_until(lambda: r.server.stats.messages == 1)
        client_gone.set()
        assert handled.wait(5)
        wait_until(lambda: any("disconnected" in rec.getMessage() for rec in caplog.records))
        assert r.send([message(2)]) == [ack_for(message(2))]  # still serving
    assert [rec for rec in caplog.records if rec.levelno >= logging.ERROR] == []


def test_failing_handler_closes_only_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)

    def handler(frame: Frame) -> bytes:
        if b"BOOM" in frame.data:
            raise RuntimeError("database is down")
        return ack_for(frame.data)

    boom = message(1) + b"NTE|1||BOOM\r"
    with running(handler) as r, r.connect() as other, r.connect() as failing:
        other.sendall(framed(message(2)))
        assert read_acks(other, 1) == [ack_for(message(2))]
        failing.sendall(framed(boom))
        assert closed_by_server(failing, 3)  # no ACK: the sender will retry
        other.sendall(framed(message(3)))
        assert read_acks(other, 1) == [ack_for(message(3))]
        with pytest.raises(ConnectionError, match="without an ACK"):
            r.send([message(4), boom, message(5)])
        assert r.server.stats.handler_errors == 2
        peer = f"127.0.0.1:{failing.getsockname()[1]}"
    errors = [rec for rec in caplog.records if rec.name == LOGGER and rec.levelno == logging.ERROR]
    assert any(peer in rec.getMessage() and rec.exc_info for rec in errors)


def test_connections_past_the_limit_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with running(Recorder(), max_connections=2) as r:
        with r.connect() as a, r.connect() as b:
            for sock in (a, b):  # a round trip each: both are registered
                sock.sendall(framed(message(1)))
                assert read_acks(sock, 1) == [ack_for(message(1))]
            with r.connect() as c:
                assert closed_by_server(c, 2)
            assert r.server.stats.rejected_connections == 1
        # Once those close, new connections are served again.
        wait_until(lambda: r.server.stats.connections == 2 and not r.server._connections)
        assert r.send([message(3)]) == [ack_for(message(3))]
    assert any("refused" in rec.getMessage() for rec in caplog.records)


def test_graceful_stop_finishes_in_flight_messages() -> None:
    started, release = threading.Event(), threading.Event()

    def handler(frame: Frame) -> bytes:
        started.set()
        assert release.wait(5)
        return ack_for(frame.data)

    with running(handler) as r, ThreadPoolExecutor(1) as pool, r.connect() as idle:
        port = r.server.port
        reply = pool.submit(r.send, [message(1)])
        assert started.wait(5)
        stopping = asyncio.run_coroutine_threadsafe(r.server.stop(), r.loop)
        assert closed_by_server(idle, 2)  # idle connections close at once
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert not stopping.done()  # waits for the handler
        release.set()
        assert reply.result(5) == [ack_for(message(1))]
        stopping.result(5)
        assert r.server.stats.acks == 1


def test_send_times_out_and_refuses_unframeable_messages() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no ACK"):
            send("127.0.0.1", port, [message(1)], timeout=0.3)
        assert time.monotonic() - t0 < 5
        with pytest.raises(ValueError):
            send("127.0.0.1", port, [b"MSH|" + FS + b"|"], timeout=0.3)


def test_run_serves_until_sigterm() -> None:
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
            "from healthhub.ingest.mllp import MllpServer;"
            "MllpServer(lambda f: b'MSA|AA|' + f.data[-3:], port=0).run()")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        assert send("127.0.0.1", port, [b"MSH|XYZ"], timeout=5) == [b"MSA|AA|XYZ"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
