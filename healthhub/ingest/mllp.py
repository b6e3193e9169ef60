"""MLLP listener and client: move HL7 v2 messages between TCP and a handler that returns the ACK.

Framing is the Minimal Lower Layer Protocol, release 2 (HL7 v2.x Transport Specification: MLLP,
https://www.hl7.org/implement/standards/product_brief.cfm?product_id=55): a block is
``<VT> message <FS><CR>`` (0x0B … 0x1C 0x0D); the message itself must not contain <VT> or <FS>.
This module never parses HL7: it hands each message to a handler (``Frame`` in, ACK bytes out),
which runs in a thread pool because it writes to the database.

Decisions (MLLP leaves error handling to the receiver):

* Bytes outside a block (before a <VT>, between blocks, a stray <FS><CR>) are discarded, counted in
  ``MllpServer.stats.garbage_bytes`` and logged once per run of garbage.
* A <VT> inside a block restarts the block: the sender gave up on the partial one (as HAPI, Mirth
  and Rhapsody do). The partial block is discarded and logged, never handed on.
* An <FS> not followed by <CR> is kept as message data (only <FS><CR> ends a block).
* A block longer than ``max_message`` is not buffered: its first ``max_message`` bytes are kept,
  the rest is skipped up to the end block, and the handler gets ``truncated=True`` so the HL7
  layer can answer AR.
* A block must arrive within ``frame_timeout`` seconds of its start block (slow-loris peers), and
  a connection that sends nothing for ``idle_timeout`` seconds is closed.
* Messages on one connection are handled one after another, so ACKs go back in order; different
  connections run in parallel through the thread pool.
* A handler that raises closes its connection without an ACK: the sender retries.

Why not ``hl7.mllp`` (python-hl7's asyncio reader): its ``readblock`` is ``readuntil(<FS><CR>)``
and rejects a block that does not start with <VT>, so garbage before a block loses the block; on
an over-long block it clears its buffer and raises, after which the tail of that block is read as
a new, invalid block; it cannot keep a bounded prefix, and a <VT> inside a block is not seen.
``FrameParser`` below is a small incremental (sans-I/O) parser that does all of this.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

log = logging.getLogger("healthhub.mllp")

START_BLOCK = b"\x0b"  # <VT>
END_BLOCK = b"\x1c\x0d"  # <FS><CR>
_FS = 0x1C
_CR = 0x0D
_READ_SIZE = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class Frame:
    """One message received between a start block and an end block."""

    data: bytes  # the message (at most max_message bytes)
    peer: str  # "ip:port" of the sender
    truncated: bool  # the block was longer than max_message; data holds its first max_message bytes
    size: int  # the block's full length in bytes (without the framing characters)


Handler = Callable[[Frame], bytes]


@dataclass
class MllpStats:
    """Counters of what the listener saw (all connections since start)."""

    connections: int = 0  # accepted
    rejected_connections: int = 0  # closed at once: max_connections reached, or stopping
    messages: int = 0  # whole blocks handed to the handler
    truncated: int = 0  # of which longer than max_message
    acks: int = 0  # ACKs written
    garbage_bytes: int = 0  # bytes outside any block, discarded
    aborted_frames: int = 0  # partial blocks discarded (restarted by <VT>, disconnect, timeout)
    handler_errors: int = 0
    timeouts: int = 0  # connections closed for idleness or a too-slow block


class FrameParser:
    """Split a byte stream into MLLP blocks, fed one chunk at a time (no I/O)."""

    def __init__(self, peer: str = "", max_message: int = 50 * 1024 * 1024, stats: MllpStats | None = None) -> None:
        self.peer = peer
        self.max_message = max_message
        self.stats = stats if stats is not None else MllpStats()
        self.in_frame = False
        self.frames_started = 0  # lets the caller time each block from its start block
        self._buf = bytearray()
        self._size = 0
        self._pending_fs = False  # the last chunk ended with <FS> inside a block
        self._garbage = 0  # length of the current run of garbage, logged when it ends

    @property
    def buffered(self) -> int:
        """Return how many bytes of the current block are held (never more than max_message)."""
        return len(self._buf)

    @property
    def partial_size(self) -> int:
        """Return the length of the block being read (0 outside a block)."""
        return self._size + self._pending_fs if self.in_frame else 0

    def feed(self, data: bytes) -> list[Frame]:
        """Consume a chunk; return the blocks it completed, in order."""
        out: list[Frame] = []
        n = len(data)
        i = 0
        if self._pending_fs and n:
            self._pending_fs = False
            if data[0] == _CR:
                out.append(self._finish())
                i = 1
            else:
                self._add(b"\x1c")
        view = memoryview(data)
        vt = -1  # position of the next <VT> at or after i, cached (-1: unknown, n: none)
        while i < n:
            if not self.in_frame:
                j = data.find(START_BLOCK, i)
                if j < 0:
                    self._garbage += n - i
                    self.stats.garbage_bytes += n - i
                    break
                if j > i:
                    self._garbage += j - i
                    self.stats.garbage_bytes += j - i
                self._begin()
                i = j + 1
                continue
            if vt < i:
                vt = data.find(START_BLOCK, i)
                if vt < 0:
                    vt = n
            fs = data.find(b"\x1c", i, vt)
            if fs < 0:
                self._add(view[i:vt])
                if vt < n:  # a start block inside a block: restart
                    self._abort("start block inside a block")
                    self._begin()
                i = vt + 1
                continue
            self._add(view[i:fs])
            if fs + 1 == n:
                self._pending_fs = True
                break
            if data[fs + 1] == _CR:
                out.append(self._finish())
                i = fs + 2
            else:  # a lone <FS> is data
                self._add(b"\x1c")
                i = fs + 1
        return out

    def close(self) -> int:
        """End of stream: drop a partial block and return its length (0 if none)."""
        self._flush_garbage()
        size = self.partial_size
        if self.in_frame:
            self.stats.aborted_frames += 1
            self.in_frame = False
            self._pending_fs = False
            self._buf = bytearray()
            self._size = 0
        return size

    def _begin(self) -> None:
        self._flush_garbage()
        self.in_frame = True
        self.frames_started += 1
        self._buf = bytearray()
        self._size = 0

    def _add(self, piece: bytes | memoryview) -> None:
        room = self.max_message - len(self._buf)
        if room > 0:
            self._buf += piece[:room]
        self._size += len(piece)

    def _finish(self) -> Frame:
        frame = Frame(bytes(self._buf), self.peer, self._size > self.max_message, self._size)
        self.in_frame = False
        self._buf = bytearray()
        self._size = 0
        if frame.truncated:
            self.stats.truncated += 1
            log.warning("mllp: %s sent a %d-byte message, over the %d-byte limit: truncated",
                        self.peer, frame.size, self.max_message)
        return frame

    def _abort(self, why: str) -> None:
        self.stats.aborted_frames += 1
        log.warning("mllp: %s: %s; discarded a partial block of %d bytes", self.peer, why, self._size)

    def _flush_garbage(self) -> None:
        if self._garbage:
            log.warning("mllp: %s: discarded %d bytes outside a block", self.peer, self._garbage)
            self._garbage = 0


class MllpServer:
    """An asyncio MLLP listener that hands each message to ``handler`` and sends back its ACK."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 2575, *, max_message: int = 50 * 1024 * 1024,
                 idle_timeout: float = 60.0, workers: int = 8, max_connections: int = 1000,
                 frame_timeout: float | None = None, reuse_port: bool = False) -> None:
        self.handler = handler
        #: Several listener processes on one port (SO_REUSEPORT): the kernel spreads connections.
        self.reuse_port = reuse_port
        self.host = host
        self.port = port
        self.max_message = max_message
        self.idle_timeout = idle_timeout
        # A block may take this long from its start block to its end block; default idle_timeout
        # (a 50 MB block takes well under a second on a hospital LAN).
        self.frame_timeout = idle_timeout if frame_timeout is None else frame_timeout
        self.workers = workers
        self.max_connections = max_connections
        self.stats = MllpStats()
        self._server: asyncio.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._reading: set[asyncio.Task[None]] = set()  # connections waiting for bytes (safe to close)
        self._stopping = False
        self._stopped: asyncio.Event | None = None

    async def start(self) -> None:
        """Bind and start accepting; ``self.port`` then holds the real port."""
        self._stopping = False
        self._stopped = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mllp")
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port, limit=_READ_SIZE,
                                                  reuse_port=self.reuse_port or None)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp: listening on %s:%d", self.host, self.port)

    async def serve_forever(self) -> None:
        """Wait until ``stop()`` has finished."""
        if self._stopped is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop accepting, let in-flight messages finish and their ACKs be sent, then close."""
        if self._server is None:
            return
        assert self._stopped is not None
        if self._stopping:  # a second call (another signal) waits for the first
            await self._stopped.wait()
            return
        self._stopping = True
        self._server.close()
        # Connections waiting for bytes are closed now (a partial block is dropped; the sender
        # resends it); those running a handler close after writing its ACK.
        for task in list(self._reading):
            self._connections[task].close()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        log.info("mllp: stopped (%s)", self.stats)
        self._stopped.set()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully (blocking; for the CLI)."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.start()
        stopping: list[asyncio.Task[None]] = []  # keep a reference: the loop holds tasks weakly

        def on_signal() -> None:
            log.info("mllp: signal received; stopping")
            stopping.append(loop.create_task(self.stop()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C raises KeyboardInterrupt instead
                loop.add_signal_handler(sig, on_signal)
        await self.serve_forever()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer.get_extra_info("peername"))
        if self._stopping or len(self._connections) >= self.max_connections:
            self.stats.rejected_connections += 1
            log.warning("mllp: refused %s: %s", peer,
                        "stopping" if self._stopping else f"{self.max_connections} connections open")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self.stats.connections += 1
        log.info("mllp: %s connected", peer)
        parser = FrameParser(peer, self.max_message, self.stats)
        try:
            await self._read_loop(reader, writer, peer, task, parser)
        except Exception:  # never let one connection take the listener down
            log.exception("mllp: %s: unexpected error", peer)
        finally:
            # Closed by the peer, a timeout, a failed handler or stop(): a partial block is dropped.
            dropped = parser.close()
            if dropped:
                log.warning("mllp: %s: connection closed mid-block; discarded %d bytes", peer, dropped)
            self._reading.discard(task)
            del self._connections[task]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.info("mllp: %s disconnected", peer)

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                         task: asyncio.Task[None], parser: FrameParser) -> None:
        """Read blocks and answer each until the peer leaves, times out, fails, or the server stops."""
        started = parser.frames_started
        frame_time = 0.0  # seconds spent waiting for the bytes of the current block
        while not self._stopping:
            if parser.frames_started != started:
                started, frame_time = parser.frames_started, 0.0
            timeout = self.idle_timeout
            frame_bound = parser.in_frame and self.frame_timeout - frame_time < timeout
            if frame_bound:
                timeout = self.frame_timeout - frame_time
            self._reading.add(task)
            t0 = time.monotonic()
            try:
                chunk = await asyncio.wait_for(reader.read(_READ_SIZE), max(timeout, 0.0))
            except (TimeoutError, ConnectionError) as exc:
                chunk = b""
                if isinstance(exc, TimeoutError):
                    self.stats.timeouts += 1
                    log.warning("mllp: %s: %s; closing", peer,
                                f"block not complete after {self.frame_timeout:g} s" if frame_bound
                                else f"idle for {self.idle_timeout:g} s")
            finally:
                self._reading.discard(task)
            frame_time += time.monotonic() - t0
            if not chunk or self._stopping:
                # After stop() closed this idle connection, a block that came with the close is not
                # handled: its ACK could not be sent, so the sender resends it anyway.
                return
            for frame in parser.feed(chunk):
                if not await self._handle(frame, writer):
                    return

    async def _handle(self, frame: Frame, writer: asyncio.StreamWriter) -> bool:
        """Run the handler on one message and write its ACK; return False to close the connection."""
        assert self._pool is not None
        self.stats.messages += 1
        try:
            ack = await asyncio.get_running_loop().run_in_executor(self._pool, self.handler, frame)
            if not isinstance(ack, bytes | bytearray):
                raise TypeError(f"handler returned {type(ack).__name__}, not bytes")
        except Exception:
            self.stats.handler_errors += 1
            log.exception("mllp: %s: handler failed on a %d-byte message; closing without an ACK",
                          frame.peer, frame.size)
            return False
        try:
            writer.write(START_BLOCK + ack + END_BLOCK)
            await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except TimeoutError:  # before OSError, its base class
            self.stats.timeouts += 1
            log.warning("mllp: %s: ACK not read for %g s; closing", frame.peer, self.idle_timeout)
            return False
        except OSError as exc:
            # The peer left after sending the message: it was handled; the ACK is lost (the
            # sender resends, and the pipeline recognises the message by MSH-10).
            log.info("mllp: %s: ACK not delivered (%s)", frame.peer, exc)
            return False
        self.stats.acks += 1
        return True


def send(host: str, port: int, messages: Iterable[bytes], *, timeout: float = 30.0) -> list[bytes]:
    """Send each message framed on one connection, waiting for its ACK; return the ACKs unframed."""
    acks: list[bytes] = []
    received: list[bytes] = []  # ACKs read but not yet matched to a message
    parser = FrameParser(f"{host}:{port}")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for number, message in enumerate(messages, 1):
            # MLLP content must not contain <VT> or <FS> (the receiver would split the message).
            if b"\x0b" in message or b"\x1c" in message:
                raise ValueError(f"message {number} contains an MLLP start block or end block character")
            what = f"{host}:{port}, message {number}"
            deadline = time.monotonic() + timeout
            _io(sock, partial(sock.sendall, START_BLOCK + message + END_BLOCK), deadline, timeout, what)
            while not received:
                chunk = _io(sock, partial(sock.recv, _READ_SIZE), deadline, timeout, what)
                if not chunk:
                    raise ConnectionError(f"{what}: the server closed the connection without an ACK")
                received.extend(frame.data for frame in parser.feed(chunk))
            acks.append(received.pop(0))
    return acks


def _io(sock: socket.socket, call: Callable[[], _T], deadline: float, timeout: float, what: str) -> _T:
    """Run one socket call before ``deadline``, with errors that say what was waited for."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"{what}: no ACK within {timeout:g} s")
    sock.settimeout(remaining)
    try:
        return call()
    except TimeoutError:
        raise TimeoutError(f"{what}: no ACK within {timeout:g} s") from None
    except ConnectionError as exc:
        raise ConnectionError(f"{what}: connection lost before the ACK ({exc})") from exc


def _peer_name(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host = peername[0]
        return f"[{host}]:{peername[1]}" if ":" in str(host) else f"{host}:{peername[1]}"
    return str(peername)
