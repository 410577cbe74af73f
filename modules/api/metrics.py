"""Prometheus metrics at ``/metrics``: requests, latencies, recognition stages, faces, errors, video jobs.

The metrics (all prefixed ``facerec_``; reference: docs/operations.md):

``http_requests_total{route, method, status}``, ``http_request_duration_seconds{route, method}``
    every answer, by URL rule (``/api/v1/galleries/<gallery>``: never a name from the path);
``http_errors_total{code}``
    error answers by their error code (``bad_image``, ``too_large``, ``unsupported_media_type``: images refused
    before or while decoding; ``unavailable``: a busy database or no decoding slot; ...);
``recognition_stage_seconds{operation, stage}``, ``recognitions_total{operation}``, ``faces_detected_total{operation}``
    the recognizer's own per-stage timings (the ``timings_ms`` of the answers) and the faces it found;
``video_jobs{status}``, ``video_queue_depth``
    the job store's counts, read when scraped.

One process: the app's own registry, with the process collectors (memory, CPU, open files).  Several
processes (gunicorn workers): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before the server starts;
every worker writes its values there and ``/metrics`` answers the sum over all of them (gunicorn's
``child_exit`` hook calls :func:`child_exit`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ..files import private_dir
from .auth import public

log = logging.getLogger("facerec.api")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: seconds; from a health check to a large enrollment or re-embedding
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: seconds; one stage of one image
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class VideoJobsCollector:
    """``facerec_video_jobs{status}`` and ``facerec_video_queue_depth`` from the job store, when scraped."""

    def __init__(self, store: Callable[[], Any]):
        self._store = store

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("facerec_video_jobs", "video jobs in the job store, by status", labels=["status"]),
                GaugeMetricFamily("facerec_video_queue_depth", "video jobs waiting for a worker (queued)")]

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        if store is None:
            return
        try:
            counts = store.count_by_status()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail for a busy job database
            log.warning("metrics: cannot count video jobs: %s", exc)
            return
        jobs, depth = self.describe()
        for status in sorted({*JOB_STATES, *counts}):
            jobs.add_metric([status], counts.get(status, 0))
        depth.add_metric([], counts.get("queued", 0))
        yield from (jobs, depth)


class Metrics:
    """The service's metrics, in a registry of its own (one per app)."""

    def __init__(self, video_store: Callable[[], Any] = lambda: None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("facerec_http_requests", "HTTP answers, by URL rule, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("facerec_http_request_duration_seconds",
                                 "time to answer (to the headers of a streamed answer), by URL rule and method",
                                 ["route", "method"], buckets=REQUEST_BUCKETS, registry=r)
        self.errors = Counter("facerec_http_errors", "error answers, by error code (bad_image, too_large, ...)",
                              ["code"], registry=r)
        self.stages = Histogram("facerec_recognition_stage_seconds", "the recognizer's time per stage of one image",
                                ["operation", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.recognitions = Counter("facerec_recognitions", "images (pairs for verify) the recognizer analysed",
                                    ["operation"], registry=r)
        self.faces = Counter("facerec_faces_detected", "faces found in analysed images", ["operation"], registry=r)
        self.video_jobs = VideoJobsCollector(video_store)
        if multiprocess_dir() is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            r.register(self.video_jobs)

    # --- observations ------------------------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float | None) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        if seconds is not None:
            self.latency.labels(route, method).observe(seconds)

    def observe_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def observe_result(self, operation: str, result: Any) -> None:
        """A :class:`~modules.recognizer.FaceRecognizer` listener: stage timings and faces of one result."""
        self.recognitions.labels(operation).inc()
        for stage, ms in result.timings_ms.items():
            self.stages.labels(operation, stage).observe(ms / 1000.0)
        faces = getattr(result, "faces", None)
        if faces is not None:
            self.faces.labels(operation).inc(len(faces))

    # --- exposition --------------------------------------------------------------------------------
    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text format the scraper asked for (OpenMetrics or Prometheus text), and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        folder = multiprocess_dir()
        if folder is None:
            return encoder(self.registry), content_type
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()  # every worker's values, summed
        MultiProcessCollector(registry, path=folder)
        registry.register(self.video_jobs)
        return encoder(registry), content_type


def register_metrics(app: Flask, metrics: Metrics, *, require_key: bool) -> None:
    """``GET /metrics`` (not in the OpenAPI document: its answer is text, not JSON); public unless
    ``require_key`` (then any valid key when keys are on: a key for a gallery that does not exist will do)."""
    if (folder := multiprocess_dir()) is not None:
        private_dir(folder)

    def metrics_view() -> Response:
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    app.add_url_rule("/metrics", "metrics", metrics_view if require_key else public(metrics_view), methods=["GET"])


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: a dead worker's live values leave the multiprocess folder."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
