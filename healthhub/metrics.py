"""Prometheus metrics (https://prometheus.io/docs/instrumenting/exposition_formats/): requests by
route and status with their latencies, inbound payloads by kind and outcome, and Bulk Data
export jobs (run by ``healthhub worker`` or by the worker thread of each web process).

Every gunicorn worker is a process of its own; a scrape reaches one of them. So ``healthhub
serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode: each process
writes its samples to memory-mapped files there, and ``/metrics`` adds them up across the
workers, dead ones included: counters never go backwards). Without it (tests, ``flask run``) the
process's own registry answers. https://prometheus.github.io/client_python/multiprocess/

Labels are bounded on purpose: the route is the URL rule (``/fhir/<rtype>/<rid>``), never the
path, so no identifier of a patient ever becomes a label.
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

REQUESTS = Counter("healthhub_http_requests", "HTTP requests answered, by method, route and status.",
                   ["method", "route", "status"])
LATENCY = Histogram("healthhub_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
                    ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
INGESTED = Counter("healthhub_ingest_payloads", "Inbound payloads archived, by kind (hl7v2, csv, fhir) "
                   "and outcome (stored, partial, rejected, failed, duplicate…), counted once committed.",
                   ["kind", "outcome"])

EXPORT_JOBS = Counter("healthhub_export_jobs", "Export jobs a worker finished, by outcome (completed, failed, "
                      "cancelled; lost: taken over by another worker that presumed this one dead).", ["outcome"])
EXPORT_RESOURCES = Counter("healthhub_export_resources", "Resources written to export files, counted as each "
                           "page of them is written.")
# A gauge says how a multiprocess scrape combines the processes' values (each gunicorn worker runs
# an export thread): the jobs running now add up over the live processes; the last poll is the latest.
EXPORT_RUNNING = Gauge("healthhub_export_jobs_in_progress", "Export jobs being run now.",
                       multiprocess_mode="livesum")
EXPORT_POLLED = Gauge("healthhub_export_worker_last_poll_timestamp_seconds", "Unix time at which a worker last "
                      "looked for waiting jobs in the database (it stays put while the database is unreachable).",
                      multiprocess_mode="livemax")


def registry() -> CollectorRegistry:
    """Every process's metrics (multiprocess mode), or this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """The text exposition of :func:`registry`, and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def serve_separately(host: str, port: int) -> None:
    """Expose :func:`registry` on ``http://host:port/metrics`` from a thread of this process —
    for ``healthhub mllp`` and ``healthhub worker``, which have no web server of their own (the
    listener processes count the HL7 v2 payloads they archive; the worker, its export jobs)."""
    start_http_server(port, addr=host, registry=registry())


def process_exited(pid: int) -> None:
    """gunicorn's ``child_exit``: fold a dead worker's live samples away (multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
