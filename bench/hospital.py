"""Hospital ingest benchmark: HL7 v2 over MLLP end to end, CSV case reports, patient matching.

    .venv/bin/python bench/hospital.py [--db postgres|sqlite] [--messages N] [--csv-rows N]
                                       [--persons N] [--out FILE] [--only hl7,csv,mpi]

1. HL7 v2 over MLLP: on a fresh benchmark database (``BENCH_POSTGRES_URL`` or a temporary
   SQLite file) the sending hospital is registered and the real listener is started as a
   subprocess (``healthhub mllp``). N distinct ORU^R01 lab reports (one patient per 10 messages,
   5–10 OBX each, unique MSH-10) are sent (a) over one connection and (b) over ``--connections``
   concurrent connections (a thread and a connection each, every message waiting for its ACK);
   messages/s, ACK latency and the ACK codes are reported (anything but AA fails the run), then
   the stored Observations, DiagnosticReports and Patients are counted against what was sent.
2. CSV: a synthetic case-report line list of ``--csv-rows`` rows is written to a temporary file
   (streamed, never held in memory) and loaded with ``healthhub ingest FILE.csv --quiet`` as a
   subprocess, on another fresh database: rows/s, the subprocess's peak RSS, accepted/rejected.
3. Patient matching: ``bench/mpi.py``'s labelled evaluation (precision, recall, F1).

Prints a table and writes JSON (machine, date, commit, command, every figure, the targets).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import orjson  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench import mpi as mpi_bench  # noqa: E402
from bench.database import DEFAULT_POSTGRES_URL, BenchDatabase, bench_database  # noqa: E402
from bench.machine import describe  # noqa: E402
from bench.server import free_port, healthhub_command, terminate  # noqa: E402
from healthhub.clock import utcnow  # noqa: E402
from healthhub.config import PROJECT_ROOT, Config  # noqa: E402
from healthhub.db import Database  # noqa: E402
from healthhub.ingest import mllp, senders  # noqa: E402

# Targets of the issue.
HL7_MIN_RATE = 300.0  # messages/s, PostgreSQL, this 2-core machine
MPI_PRECISION = mpi_bench.PRECISION_TARGET
MPI_RECALL = mpi_bench.RECALL_TARGET

MESSAGES_PER_PATIENT = 10
WARMUP_MESSAGES = 50  # sent first over one connection, not timed (imports, caches, connection pool)
HL7_SENDER = "BKKLAB"
BENCH_TZ = "Asia/Bangkok"


def log(msg: str) -> None:
    print(msg, flush=True)


# -- synthetic people ---------------------------------------------------------------------------

GIVEN_M = ["Anan", "Somchai", "Niran", "Prasit", "Kittisak", "Chaiwat", "Sombat", "Wichai", "Arthit", "Thanakorn",
           "Somsak", "Surachai", "Pichit", "Manop", "Ekkachai", "Nattapong", "Wanchai", "Boonsong", "Chatchai", "Decha"]
GIVEN_F = ["Malee", "Pranee", "Suda", "Kanya", "Nok", "Ratana", "Siriporn", "Waraporn", "Busaba", "Ploy",
           "Sunisa", "Kannika", "Jintana", "Orathai", "Pensri", "Nittaya", "Duangjai", "Lamai", "Sasithorn", "Achara"]
# "…-Synth" family names, two syllables each (784 of them): nobody can mistake a row of this file
# for a real person's. The marker is a suffix: the MPI blocks on the first six letters of a
# name's NYSIIS code, and a common prefix would make 26 codes of them (443 this way), blocks
# far larger than real names make.
_SYLLABLES = ("sri", "suk", "jai", "dee", "wong", "sa", "thong", "in", "tha", "sorn", "boon", "mee", "chai", "yo",
              "kaew", "ma", "nee", "rat", "ta", "na", "phrom", "sae", "lim", "kham", "saen", "pan", "yai", "noi")
FAMILY = [f"{a.capitalize()}{b}-Synth" for a in _SYLLABLES for b in _SYLLABLES]
# Province → districts (real place names; the people living there are not).
PLACES = {
    "Bangkok": ["Bang Rak", "Pathum Wan", "Chatuchak", "Huai Khwang", "Bang Kapi"],
    "Chiang Mai": ["Mueang Chiang Mai", "San Sai", "Hang Dong", "Mae Rim"],
    "Khon Kaen": ["Mueang Khon Kaen", "Ban Phai", "Nam Phong"],
    "Songkhla": ["Hat Yai", "Mueang Songkhla", "Sadao"],
    "Nonthaburi": ["Pak Kret", "Bang Yai", "Mueang Nonthaburi"],
}
PROVINCES = list(PLACES)


def national_id(body: str) -> str:
    """12 digits + the check digit ``validate_national_id`` expects (weights 13…2, mod 11)."""
    check = (11 - sum(int(d) * (13 - i) for i, d in enumerate(body)) % 11) % 10
    return body + str(check)


@dataclass(frozen=True)
class Person:
    nid: str
    family: str
    given: str
    sex: str  # M | F
    born: date
    province: str
    district: str
    phone: str


def person(seed: str, index: int) -> Person:
    """Person ``index`` of a population, the same every time (no table held in memory)."""
    rng = random.Random(f"{seed}:{index}")
    sex = rng.choice("MF")
    province = rng.choice(PROVINCES)
    return Person(nid=national_id(str(rng.randint(1, 8)) + f"{rng.randrange(10**11):011d}"),
                  family=rng.choice(FAMILY), given=rng.choice(GIVEN_M if sex == "M" else GIVEN_F), sex=sex,
                  born=date(1940, 1, 1) + timedelta(days=rng.randrange(80 * 365)), province=province,
                  district=rng.choice(PLACES[province]), phone=f"{rng.randrange(10**8):08d}")


# -- HL7 v2 lab reports -------------------------------------------------------------------------

@dataclass(frozen=True)
class Test:
    loinc: str
    name: str
    unit: str  # UCUM code
    unit_text: str
    low: float
    high: float
    decimals: int


# A complete blood count (LOINC panel 58410-2), the commonest lab report there is.
CBC = [
    Test("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", "thousand per microliter",
         4.0, 10.0, 1),
    Test("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", "million per microliter",
         4.2, 5.9, 2),
    Test("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "gram per deciliter", 12.0, 17.0, 1),
    Test("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", "percent", 36.0, 50.0, 0),
    Test("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "thousand per microliter",
         150.0, 400.0, 0),
    Test("787-2", "MCV [Entitic volume] by Automated count", "fL", "femtoliter", 80.0, 100.0, 0),
    Test("785-6", "MCH [Entitic mass] by Automated count", "pg", "picogram", 27.0, 33.0, 1),
    Test("786-4", "MCHC [Mass/volume] by Automated count", "g/dL", "gram per deciliter", 32.0, 36.0, 1),
    Test("788-0", "Erythrocyte distribution width [Ratio] by Automated count", "%", "percent", 11.5, 14.5, 1),
    Test("770-8", "Neutrophils/100 leukocytes in Blood by Automated count", "%", "percent", 40.0, 75.0, 0),
]
_EPOCH = datetime(2024, 6, 1, 7, 0, 0)


def obx_count(index: int) -> int:
    """5–10 results per report, cycling (mean 7.5)."""
    return 5 + (index * 7) % 6


def lab_report(index: int, seed: str = "hl7") -> bytes:
    """ORU^R01 (v2.5.1) number ``index``: a CBC of patient ``index // 10`` from ``HL7_SENDER``,
    with a unique MSH-10 and filler order number and values that vary from report to report."""
    rng = random.Random(f"{seed}:msg:{index}")
    p_index = index // MESSAGES_PER_PATIENT
    who = person(seed, p_index)
    collected = _EPOCH + timedelta(minutes=3 * index + rng.randrange(3))
    reported = collected + timedelta(minutes=20 + rng.randrange(100))
    ts = reported.strftime("%Y%m%d%H%M%S") + "+0700"
    taken = collected.strftime("%Y%m%d%H%M%S") + "+0700"
    fac = HL7_SENDER
    placer, filler = f"ORD{index:09d}", f"LAB{index:09d}"
    segments = [
        f"MSH|^~\\&|LIS|{fac}|HEALTHHUB|MOPH|{ts}||ORU^R01^ORU_R01|{fac}-{index:010d}|P|2.5.1|||AL|NE",
        f"PID|1||HN{p_index:08d}^^^{fac}^MR~{who.nid}^^^TH-MOI^NI||{who.family}^{who.given}||"
        f"{who.born:%Y%m%d}|{who.sex}|||{1 + p_index % 400} Soi Bench^^{who.district}^{who.province}^10{p_index % 900:03d}"
        f"^THA||^PRN^PH^^66^{who.phone}",
        f"PV1|1|O|OPD^^^{fac}",
        f"ORC|RE|{placer}^{fac}|{filler}^{fac}|||||||||{1000 + index % 50}^Benchdoctor^Kasem^^^^^^{fac}^L",
        f"OBR|1|{placer}^{fac}|{filler}^{fac}|58410-2^CBC panel - Blood by Automated count^LN|||{taken}|||||||||"
        f"{1000 + index % 50}^Benchdoctor^Kasem^^^^^^{fac}^L||||||{ts}|||F",
    ]
    for k, test in enumerate(CBC[:obx_count(index)], start=1):
        mid, half = (test.low + test.high) / 2, (test.high - test.low) / 2
        value = round(rng.gauss(mid, half * 0.6), test.decimals)
        flag = "H" if value > test.high else "L" if value < test.low else "N"
        shown = f"{value:.{test.decimals}f}"
        segments.append(f"OBX|{k}|NM|{test.loinc}^{test.name}^LN||{shown}|{test.unit}^{test.unit_text}^UCUM|"
                        f"{test.low:g}-{test.high:g}|{flag}|||F|||{taken}")
    segments.append(f"SPM|1|||119297000^Blood specimen^SCT|||||||||||||{taken}")
    return ("\r".join(segments) + "\r").encode()


# -- the listener -------------------------------------------------------------------------------

def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (0.0 where /proc is not there)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every process in a process group (a listener and its worker processes)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/pid/stat: the process group
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def _stat_cpu(raw: str) -> float:
    """utime + stime (seconds) from the text of /proc/<pid>/stat."""
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _client_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` holds (/proc/<pid>/fd and /proc/net/tcp*)."""
    inodes: set[str] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (parent ids from /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    family, grown = {pid}, True
    while grown:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grown = bool(more)
    return sorted(family)


class BackendCpu:
    """CPU time of the PostgreSQL backends that serve one client process (the listener, the CSV
    ingest), told apart from other clients of the same server by the client port in each
    backend's process title. Sampled every ``interval`` s: a backend that starts and ends between
    two samples (a pool's overflow connection) is missed, and one that ends loses at most its
    last ``interval`` s."""

    def __init__(self, client_pid: int, interval: float = 0.5) -> None:
        self.client_pid = client_pid
        self.interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, initial: bool = False) -> None:
        # the client and its children (``healthhub mllp --processes N`` runs N child processes)
        ports = set().union(*(_client_ports(pid) for pid in _family(self.client_pid)))
        if not ports:
            return
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                raw = (proc / "stat").read_text()
                if not raw.split(" (", 1)[1].startswith("postgres)"):
                    continue
                title = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
            except (OSError, IndexError):
                continue
            found = re.search(r"\((\d+)\)", title)
            if found is None or int(found.group(1)) not in ports:
                continue
            pid, cpu = int(proc.name), _stat_cpu(raw)
            # A backend first seen after the start began during the phase: all its time counts.
            self._first.setdefault(pid, cpu if initial else 0.0)
            self._last[pid] = cpu

    def __enter__(self) -> BackendCpu:
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(self._last[pid] - first for pid, first in self._first.items())

    @property
    def backends(self) -> int:
        """Backends seen (more than the pool holds: connections were opened during the phase)."""
        return len(self._first)


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat), to tell a saturated machine."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


class Listener:
    """``healthhub mllp`` on a free loopback port against the benchmark database."""

    def __init__(self, database_url: str, workdir: Path, processes: int = 1) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.processes = processes
        self.log_path = workdir / "mllp.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Listener:
        env = {**os.environ, "HEALTHHUB_DATABASE_URL": self.database_url,
               "HEALTHHUB_SIGNING_KEY": str(self.workdir / "signing-key.pem")}
        with self.log_path.open("ab") as out:
            # Its own session, so stopping it can never signal the harness.
            self.proc = subprocess.Popen([*healthhub_command(), "mllp", "--host", "127.0.0.1", "--port",
                                          str(self.port), "--processes", str(self.processes)],
                                         cwd=PROJECT_ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"healthhub mllp exited with {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"healthhub mllp did not listen within 60 s; see {self.log_path}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """CPU of the listener and, with --processes, of its listener processes (its own session)."""
        return _group_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        """SIGTERM (the listener finishes in-flight messages), SIGKILL to its group after 30 s."""
        proc, self.proc = self.proc, None
        terminate(proc)


# -- sending ------------------------------------------------------------------------------------

def _timed(messages: list[bytes], latencies: list[float]) -> Iterator[bytes]:
    """Yield the messages to ``mllp.send``, which asks for the next one only after the previous
    one's ACK arrived: the time between two requests is one message's send-to-ACK latency."""
    sent = 0.0
    for i, message in enumerate(messages):
        now = time.perf_counter()
        if i:
            latencies.append(now - sent)
        sent = time.perf_counter()
        yield message
    if messages:
        latencies.append(time.perf_counter() - sent)


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK ("??" when there is none)."""
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA") and len(segment) > 4:
            return segment[4:].split(segment[3:4], 1)[0].decode("ascii", "replace") or "??"
    return "??"


@dataclass
class Phase:
    name: str
    connections: int
    messages: int
    observations: int
    seconds: float
    latencies: list[float]
    acks: Counter[str]
    errors: list[str]
    listener_cpu_s: float
    postgres_cpu_s: float  # the listener's backends
    postgres_backends: int
    harness_cpu_s: float
    machine_busy: float  # share of both cores busy during the phase (all processes)
    machine_cpu_s: float  # busy CPU seconds of the machine (both cores, every process)
    bad_acks: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"connections": self.connections, "messages": self.messages, "observations": self.observations,
                "seconds": round(self.seconds, 2), "messages_per_s": round(self.rate, 1),
                "observations_per_s": round(self.observations / self.seconds, 1) if self.seconds else 0.0,
                "ack_p50_ms": round(_pct(lat, 50) * 1000, 2), "ack_p90_ms": round(_pct(lat, 90) * 1000, 2),
                "ack_p99_ms": round(_pct(lat, 99) * 1000, 2), "ack_max_ms": round(lat[-1] * 1000, 2) if lat else 0,
                "ack_mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else 0,
                "acks": dict(sorted(self.acks.items())), "errors": self.errors,
                "bad_acks": self.bad_acks[:5],
                "listener_cpu_s": round(self.listener_cpu_s, 1),
                "listener_cpu_ms_per_message": round(self.listener_cpu_s / self.messages * 1000, 2)
                if self.messages else 0.0,
                "postgres_cpu_s": round(self.postgres_cpu_s, 1),
                "postgres_cpu_ms_per_message": round(self.postgres_cpu_s / self.messages * 1000, 2)
                if self.messages else 0.0,
                "postgres_backends": self.postgres_backends,
                "harness_cpu_s": round(self.harness_cpu_s, 1), "machine_busy": round(self.machine_busy, 3),
                "machine_cpu_s": round(self.machine_cpu_s, 1),
                # Whatever else ran meanwhile (other users of the machine, the rest of PostgreSQL).
                "other_cpu_s": round(self.machine_cpu_s - self.listener_cpu_s - self.postgres_cpu_s
                                     - self.harness_cpu_s, 1)}


def _pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def send_phase(name: str, listener: Listener, first: int, count: int, connections: int, seed: str) -> Phase:
    """Messages ``first`` … ``first + count - 1`` over ``connections`` concurrent connections.

    Each connection gets a contiguous run of whole patients (10 messages each), as a hospital's
    interfaces would send them, so no two connections race to create the same Patient."""
    messages = [lab_report(i, seed) for i in range(first, first + count)]
    per = -(-count // connections)
    per = -(-per // MESSAGES_PER_PATIENT) * MESSAGES_PER_PATIENT
    runs = [messages[i:i + per] for i in range(0, count, per)]
    latencies: list[list[float]] = [[] for _ in runs]
    acks: list[list[bytes]] = [[] for _ in runs]
    errors: list[str] = []
    barrier = threading.Barrier(len(runs) + 1)

    def worker(k: int) -> None:
        barrier.wait()
        try:
            acks[k] = mllp.send("127.0.0.1", listener.port, _timed(runs[k], latencies[k]), timeout=300)
        except Exception as exc:  # noqa: BLE001 - reported, and fails the run below
            errors.append(f"connection {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(len(runs))]
    for t in threads:
        t.start()
    assert listener.proc is not None
    with BackendCpu(listener.proc.pid) as backends:
        cpu0, self0, busy0 = listener.cpu_seconds(), _self_cpu(), _machine_busy()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        cpu1, self1, busy1 = listener.cpu_seconds(), _self_cpu(), _machine_busy()
    busy = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) if busy1[1] > busy0[1] else 0.0
    machine_cpu = (busy1[0] - busy0[0]) / _CLK_TCK
    all_acks = [a for run in acks for a in run]
    codes = Counter(ack_code(a) for a in all_acks)
    bad = [a.decode("utf-8", "replace").replace("\r", " | ") for a in all_acks if ack_code(a) != "AA"]
    return Phase(name, len(runs), count, sum(obx_count(i) for i in range(first, first + count)), seconds,
                 [x for run in latencies for x in run], codes, errors, cpu1 - cpu0, backends.seconds, backends.backends,
                 self1 - self0, busy, machine_cpu,
                 bad)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def register_senders(url: str, codes: list[tuple[str, str]]) -> None:
    database = Database(Config(database_url=url))
    try:
        with database.transaction() as session:
            for code, name in codes:
                senders.create(session, code, name, utcnow(), timezone=BENCH_TZ)
    finally:
        database.dispose()


def stored_counts(db: BenchDatabase) -> dict[str, Any]:
    """Live resources per type and archived payloads per outcome."""
    engine = db.engine()
    try:
        with engine.connect() as conn:
            types = {str(t): int(n) for t, n in conn.execute(text(
                "SELECT resource_type, COUNT(*) FROM resources WHERE deleted = false GROUP BY resource_type"))}
            outcomes = {str(o): int(n) for o, n in conn.execute(text(
                "SELECT outcome, COUNT(*) FROM inbound_messages GROUP BY outcome"))}
    finally:
        engine.dispose()
    return {"resources": dict(sorted(types.items())), "archive": dict(sorted(outcomes.items()))}


def _log_phase(phase: Phase) -> None:
    j = phase.as_json()
    log(f"{phase.name}: {phase.messages} messages ({phase.observations} OBX) in {phase.seconds:.1f} s: "
        f"{phase.rate:.1f} messages/s; ACK p50 {j['ack_p50_ms']:.1f} ms, p99 {j['ack_p99_ms']:.1f} ms; "
        f"ACKs {dict(phase.acks)}; listener CPU {phase.listener_cpu_s:.1f} s "
        f"({j['listener_cpu_ms_per_message']:.1f} ms/message), PostgreSQL CPU "
        f"{j['postgres_cpu_ms_per_message']:.1f} ms/message ({phase.postgres_backends} backends), machine "
        f"{phase.machine_busy:.0%} busy (other processes {j['other_cpu_s']:.1f} s)")


def run_hl7(db: BenchDatabase, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    register_senders(db.url, [(HL7_SENDER, "Bench Laboratory (synthetic)")])
    seed = f"{args.seed}:hl7"
    n = args.messages
    phases: list[Phase] = []
    with Listener(db.url, workdir) as listener:
        log(f"listener: healthhub mllp on 127.0.0.1:{listener.port} (pid {listener.proc.pid if listener.proc else '?'},"
            f" log {listener.log_path})")
        profiler = _start_profiler(args, listener)
        warm = send_phase("warm-up", listener, 0, WARMUP_MESSAGES, 1, seed)
        log(f"warm-up: {warm.messages} messages in {warm.seconds:.1f} s, ACKs {dict(warm.acks)}")
        first = WARMUP_MESSAGES
        for name, conns in (("1 connection", 1), (f"{args.connections} connections", args.connections)):
            phase = send_phase(name, listener, first, n, conns, seed)
            first += n
            phases.append(phase)
            _log_phase(phase)
        _stop_profiler(profiler)
    if args.listener_processes > 1:
        # The same concurrent load on a listener with a process per core (healthhub mllp --processes):
        # one Python process is one core's worth of mapping and validation.
        with Listener(db.url, workdir, args.listener_processes) as listener:
            name = f"{args.connections} connections, {args.listener_processes} listener processes"
            warm2 = send_phase("warm-up 2", listener, first, WARMUP_MESSAGES, args.listener_processes, seed)
            first += WARMUP_MESSAGES
            phase = send_phase(name, listener, first, n, args.connections, seed)
            first += n
            phases.append(phase)
            _log_phase(phase)
        extra_warm = [warm2]
    else:
        extra_warm = []
    sent = [warm, *extra_warm, *phases]
    expected = {"Observation": sum(p.observations for p in sent), "DiagnosticReport": sum(p.messages for p in sent),
                "Specimen": sum(p.messages for p in sent),
                "Patient": len({i // MESSAGES_PER_PATIENT for i in range(first)})}
    counts = stored_counts(db)
    checks = {k: {"sent": v, "stored": counts["resources"].get(k, 0)} for k, v in expected.items()}
    log("stored vs sent: " + ", ".join(f"{k} {c['stored']}/{c['sent']}" for k, c in checks.items())
        + f"; archive {counts['archive']}")
    return {"database": db.label, "sender": HL7_SENDER, "warmup": warm.as_json(),
            "phases": {p.name: p.as_json() for p in phases}, "stored": counts, "checks": checks,
            "message_bytes_mean": round(statistics.fmean(len(lab_report(i, seed)) for i in range(100))),
            "profile": str(args.profile) if args.profile else None,
            "_phases": phases, "_warm": warm}


def _start_profiler(args: argparse.Namespace, listener: Listener) -> subprocess.Popen[bytes] | None:
    """py-spy on the listener for the whole HL7 run (``--profile FILE``: raw collapsed stacks)."""
    if not args.profile or listener.proc is None:
        return None
    spy = os.environ.get("PYSPY", "/tmp/pyspy/bin/py-spy")
    proc = subprocess.Popen([spy, "record", "--pid", str(listener.proc.pid), "--format", "raw", "--threads",
                             "--rate", "50", "--output", str(args.profile), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def _stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- CSV ----------------------------------------------------------------------------------------

CSV_HEADER = ("case_id,hospital_code,national_id,mrn,family_name,given_name,sex,birth_date,province,district,"
              "condition_code,onset_date,diagnosis_date,test_code,test_result,test_date,outcome")
HOSPITALS = [(f"H{k:02d}", f"Synthetic Provincial Hospital {k}") for k in range(1, 9)]
# ICD-10 codes with their lab tests (LOINC with check digits) and how results are written.
DISEASES: list[tuple[str, list[tuple[str, list[str]]]]] = [
    ("A90", [("75377-2", ["Positive", "Negative", "Detected"]), ("777-3", ["38 10*3/uL", "95 10*3/uL", "140 10*3/uL"])]),
    ("A91", [("777-3", ["18 10*3/uL", "42 10*3/uL"]), ("4544-3", ["46 %", "52 %"])]),
    ("U07.1", [("94500-6", ["Detected", "Not detected", "Inconclusive"])]),
    ("J10", [("94500-6", ["Not detected"])]),
    ("A09", []),
    ("A01.0", []),
    ("B05.9", []),
    ("A15", []),
    ("B54", []),
]
OUTCOMES = ["", "", "recovered", "under-treatment", "died", "unknown"]
BAD_ROW_EVERY = 1000  # one row in a thousand has a wrong national id check digit (rejected on purpose)
REPEAT_SHARE = 0.1  # rows about a patient an earlier row already reported


@dataclass
class CsvFile:
    path: Path
    rows: int
    bad_rows: int
    with_test: int
    size_bytes: int
    seconds: float


def write_csv(path: Path, rows: int, seed: str) -> CsvFile:
    """A deterministic synthetic line list, written row by row (memory does not grow with it)."""
    t0 = time.perf_counter()
    rng = random.Random(f"{seed}:csv")
    bad = with_test = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(CSV_HEADER + "\n")
        for r in range(1, rows + 1):
            p = r if r < 100 or rng.random() >= REPEAT_SHARE else rng.randrange(1, r)
            who = person(seed, p)
            hosp = HOSPITALS[p % len(HOSPITALS)][0]
            nid = who.nid
            if r % BAD_ROW_EVERY == 0:
                nid = nid[:12] + str((int(nid[12]) + 1) % 10)
                bad += 1
            elif p % 10 == 7:
                nid = ""  # known by MRN only
            code, tests = DISEASES[rng.randrange(len(DISEASES))]
            diagnosed = date(2024, 1, 1) + timedelta(days=rng.randrange(365))
            diagnosed = max(diagnosed, who.born + timedelta(days=30))
            onset = max(who.born, diagnosed - timedelta(days=rng.randrange(8)))
            test = result = test_day = ""
            if tests and rng.random() < 0.7:
                test, results = tests[rng.randrange(len(tests))]
                result = results[rng.randrange(len(results))]
                test_day = str(max(onset, diagnosed - timedelta(days=rng.randrange(2))))
                with_test += 1
            outcome = OUTCOMES[rng.randrange(len(OUTCOMES))]
            out.write(f"{hosp}-{r:08d},{hosp},{nid},{hosp}HN{p:08d},{who.family.upper() if r % 5 == 0 else who.family},"
                      f"{who.given},{who.sex},{who.born},{who.province},{who.district},{code},{onset},{diagnosed},"
                      f"{test},{result},{test_day},{outcome}\n")
    return CsvFile(path, rows, bad, with_test, path.stat().st_size, time.perf_counter() - t0)


def run_csv(db: BenchDatabase, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    register_senders(db.url, HOSPITALS)
    path = workdir / f"case-report-{args.csv_rows}.csv"
    log(f"writing {args.csv_rows:,} rows to {path} …")
    made = write_csv(path, args.csv_rows, str(args.seed))
    log(f"  {made.size_bytes / 2**20:,.1f} MiB in {made.seconds:.1f} s ({made.bad_rows} rows with a wrong "
        f"check digit, {made.with_test:,} with a lab test)")
    env = {**os.environ, "HEALTHHUB_DATABASE_URL": db.url, "HEALTHHUB_SIGNING_KEY": str(workdir / "signing-key.pem")}
    command = [*healthhub_command(), "ingest", str(path), "--quiet"]
    log(f"running {' '.join(command)} …")
    err_path = workdir / "ingest.stderr"
    t0 = time.perf_counter()
    with err_path.open("wb") as err:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        with BackendCpu(proc.pid, interval=2.0) as backends:
            stdout = proc.stdout.read()
            # wait4: this child's own rusage (RUSAGE_CHILDREN would mix in the MLLP listener's).
            _, status, usage = os.wait4(proc.pid, 0)
    seconds, pg_cpu = time.perf_counter() - t0, backends.seconds
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = stdout.decode("utf-8", "replace").strip()
    stderr = err_path.read_text(encoding="utf-8", errors="replace").splitlines()
    stderr_head, stderr_tail = stderr[:5], stderr[5:][-40:]
    stored = _count(r"(\d+) CSV rows stored", out)
    rejected = _count(r"(\d+) CSV rows rejected", out)
    peak_rss = usage.ru_maxrss * 1024  # Linux: KiB
    log(f"  exit {proc.returncode}: {out}")
    path.unlink()
    counts = stored_counts(db)
    return {"database": db.label, "rows": made.rows, "file_bytes": made.size_bytes, "bad_rows_written": made.bad_rows,
            "rows_with_test": made.with_test, "generate_seconds": round(made.seconds, 1),
            "command": " ".join(shlex.quote(c) for c in command), "exit_code": proc.returncode,
            "output": out, "stderr_head": stderr_head, "stderr_tail": stderr_tail, "seconds": round(seconds, 1),
            "rows_per_s": round(made.rows / seconds, 1), "accepted": stored, "rejected": rejected,
            "peak_rss_bytes": peak_rss, "cpu_user_s": round(usage.ru_utime, 1), "cpu_sys_s": round(usage.ru_stime, 1),
            "cpu_ms_per_row": round((usage.ru_utime + usage.ru_stime) / made.rows * 1000, 2),
            "postgres_cpu_s": round(pg_cpu, 1), "postgres_cpu_ms_per_row": round(pg_cpu / made.rows * 1000, 2),
            "stored": counts,
            "ok": stored == made.rows - made.bad_rows and rejected == made.bad_rows}


def _count(pattern: str, output: str) -> int | None:
    found = re.search(pattern, output)
    return int(found.group(1)) if found else None


# -- MPI ----------------------------------------------------------------------------------------

def run_mpi(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out = workdir / "mpi.json"
    code = mpi_bench.main(["--persons", str(args.persons), "--seed", str(args.mpi_seed), "--out", str(out)])
    doc = orjson.loads(out.read_bytes())
    report = doc["report"]
    return {"persons": args.persons, "seed": args.mpi_seed, "records": report["records"],
            "precision": report["precision"], "recall": report["recall"], "f1": report["f1"],
            "true_pairs": report["true_pairs"], "true_pos": report["true_pos"], "false_pos": report["false_pos"],
            "false_neg": report["false_neg"], "candidate_pairs": report["candidate_pairs"],
            "pair_completeness": report["pair_completeness"], "seconds": report["seconds"],
            "thresholds": doc["thresholds"], "exit_code": code}


# -- report -------------------------------------------------------------------------------------

def targets(kind: str, hl7: dict[str, Any] | None, mpi: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if hl7 is not None:
        for name, phase in hl7["phases"].items():
            out.append({"target": f"HL7 v2 over MLLP ({name}) >= {HL7_MIN_RATE:g} messages/s"
                                  + ("" if kind == "postgres" else f" (target is for PostgreSQL; {kind} shown)"),
                        "value": phase["messages_per_s"], "pass": phase["messages_per_s"] >= HL7_MIN_RATE})
    if mpi is not None:
        out.append({"target": f"patient matching precision >= {MPI_PRECISION}", "value": round(mpi["precision"], 4),
                    "pass": mpi["precision"] >= MPI_PRECISION})
        out.append({"target": f"patient matching recall >= {MPI_RECALL}", "value": round(mpi["recall"], 4),
                    "pass": mpi["recall"] >= MPI_RECALL})
    return out


def print_report(doc: dict[str, Any]) -> None:
    log(f"\n=== hospital ingest ({doc['db']}) ===")
    hl7 = doc.get("hl7")
    if hl7:
        log(f"HL7 v2 ORU^R01 over MLLP (mean {hl7['message_bytes_mean']} bytes, 5-10 OBX, 1 patient per "
            f"{MESSAGES_PER_PATIENT} messages), ACK received:")
        log(f"  {'phase':<16}{'messages':>9}{'seconds':>9}{'msg/s':>9}{'OBX/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'CPU ms/msg: listener':>22}{'PostgreSQL':>12}{'machine busy':>14}  ACKs")
        for name, p in hl7["phases"].items():
            log(f"  {name:<16}{p['messages']:>9}{p['seconds']:>9.1f}{p['messages_per_s']:>9.1f}"
                f"{p['observations_per_s']:>9.0f}{p['ack_p50_ms']:>9.1f}{p['ack_p99_ms']:>9.1f}"
                f"{p['listener_cpu_ms_per_message']:>22.1f}{p['postgres_cpu_ms_per_message']:>12.1f}"
                f"{p['machine_busy']:>14.0%}  {p['acks']}")
        log("  stored/sent: " + ", ".join(f"{k} {c['stored']}/{c['sent']}" for k, c in hl7["checks"].items()))
    csv = doc.get("csv")
    if csv:
        log(f"CSV case reports: {csv['rows']:,} rows, {csv['file_bytes'] / 2**20:,.1f} MiB: {csv['seconds']:,.1f} s, "
            f"{csv['rows_per_s']:,.1f} rows/s; peak RSS {csv['peak_rss_bytes'] / 2**20:,.0f} MiB; "
            f"accepted {csv['accepted']}, rejected {csv['rejected']} (expected {csv['bad_rows_written']}); "
            f"exit {csv['exit_code']}; CPU ms/row: ingest {csv['cpu_ms_per_row']:.1f}, "
            f"PostgreSQL {csv['postgres_cpu_ms_per_row']:.1f}")
    mpi = doc.get("mpi")
    if mpi:
        log(f"patient matching: {mpi['persons']} persons, {mpi['records']} records: precision {mpi['precision']:.4f}, "
            f"recall {mpi['recall']:.4f}, F1 {mpi['f1']:.4f}")
    log("targets:")
    for t in doc["targets"]:
        log(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<70}  {t['value']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    # 1000: about 30 s per phase at the rate measured at commit 2c7efb8 (33-37 messages/s);
    # at the 300 messages/s target it is 3 s, so raise it then.
    p.add_argument("--messages", type=int, default=1000,
                   help="HL7 v2 messages per phase (default 1000)")
    p.add_argument("--connections", type=int, default=8, help="connections of the concurrent phase (default 8)")
    p.add_argument("--listener-processes", type=int, default=2,
                   help="listener processes of a third phase (the concurrent load again; 1: no third phase; default 2)")
    # 1,000,000 takes about 70 min at the 244 rows/s measured at 2c7efb8 (100,000: 7 min).
    p.add_argument("--csv-rows", type=int, default=1_000_000, help="rows of the CSV file (default 1,000,000)")
    p.add_argument("--persons", type=int, default=2000, help="persons of the matching evaluation (default 2000)")
    p.add_argument("--mpi-seed", type=int, default=1, help="seed of the matching evaluation (default 1)")
    p.add_argument("--seed", type=int, default=20240612, help="seed of the synthetic messages and rows")
    p.add_argument("--only", default="hl7,csv,mpi", help="comma-separated parts to run (default hl7,csv,mpi)")
    p.add_argument("--profile", type=Path, help="record the listener with py-spy (raw stacks) into this file")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results-hospital-<db>.json)")
    args = p.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not args.only <= {"hl7", "csv", "mpi"}:
        p.error("--only takes hl7, csv and mpi")
    if args.messages < MESSAGES_PER_PATIENT or args.csv_rows < 1 or args.persons < 1 or args.connections < 1:
        p.error("--messages >= 10, --csv-rows, --persons and --connections >= 1")
    if args.out is None:
        args.out = Path(__file__).resolve().parent / f"results-hospital-{args.db}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg_url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    doc: dict[str, Any] = {
        "benchmark": "hospital", "db": args.db,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "argv": sys.argv[1:],
        "seed": args.seed, "machine": describe(pg_url if args.db == "postgres" else None)}
    started = time.perf_counter()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="healthhub-hospital-") as tmp:
        workdir = Path(tmp)
        if "hl7" in args.only:
            log(f"=== 1. HL7 v2 over MLLP ({args.db}): {args.messages} messages per phase ===")
            with bench_database(args.db, pg_url) as db:
                log(f"database: {db.label}")
                hl7 = run_hl7(db, args, workdir)
            phases: list[Phase] = [hl7.pop("_warm"), *hl7.pop("_phases")]
            doc["hl7"] = hl7
            for phase in phases:
                if phase.errors or set(phase.acks) != {"AA"} or sum(phase.acks.values()) != phase.messages:
                    failures.append(f"HL7 {phase.name}: ACKs {dict(phase.acks)} of {phase.messages}; "
                                    f"errors {phase.errors[:3]}; first bad ACKs {phase.bad_acks[:2]}")
            for kind, c in hl7["checks"].items():
                if c["stored"] != c["sent"]:
                    failures.append(f"HL7: {c['stored']} {kind} stored, {c['sent']} sent")
            _write(args.out, doc, started)
        if "csv" in args.only:
            log(f"\n=== 2. CSV case reports ({args.db}): {args.csv_rows:,} rows ===")
            with bench_database(args.db, pg_url) as db:
                log(f"database: {db.label}")
                doc["csv"] = run_csv(db, args, workdir)
            if not doc["csv"]["ok"]:
                failures.append(f"CSV: accepted {doc['csv']['accepted']}, rejected {doc['csv']['rejected']}, "
                                f"expected {doc['csv']['rows'] - doc['csv']['bad_rows_written']} and "
                                f"{doc['csv']['bad_rows_written']}: {doc['csv']['stderr_tail'][-3:]}")
            _write(args.out, doc, started)
        if "mpi" in args.only:
            log(f"\n=== 3. Patient matching: {args.persons} persons ===")
            doc["mpi"] = run_mpi(args, workdir)
    doc["targets"] = targets(args.db, doc.get("hl7"), doc.get("mpi"))
    doc["failures"] = failures
    _write(args.out, doc, started)
    print_report(doc)
    for failure in failures:
        log(f"FAILED: {failure}")
    log(f"\nresults written to {args.out} ({time.perf_counter() - started:,.0f} s in all)")
    return 1 if failures else 0


def _write(out: Path, doc: dict[str, Any], started: float) -> None:
    doc["seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    sys.exit(main())
