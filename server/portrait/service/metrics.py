"""Prometheus metrics the SREs' dashboards and alerts read (names are a contract)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram("portrait_request_duration_seconds", "HTTP request latency",
                                  ["endpoint", "method", "status", "outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("portrait_stage_duration_seconds", "Pipeline stage latency per request",
                                ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.batch_rows = Histogram("portrait_batch_size", "Rows per model call after cross-request batching",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("portrait_batch_requests", "Caller calls merged into one model call",
                                        ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("portrait_batch_duration_seconds", "Model call latency",
                                       ["model"], buckets=STAGE_BUCKETS, registry=r)
        self.queue_wait = Histogram("portrait_queue_wait_seconds", "Time items wait for a batch",
                                    ["model"], buckets=STAGE_BUCKETS, registry=r)
        self.queue_depth = Gauge("portrait_queue_depth", "Rows waiting per model queue", ["model"], registry=r)
        self.dropped = Counter("portrait_batch_dropped_total", "Queued items dropped before running",
                               ["model", "reason"], registry=r)
        self.decisions = Counter("portrait_decisions_total", "Decisions by outcome and reason",
                                 ["endpoint", "decision", "reason"], registry=r)
        self.decode_failures = Counter("portrait_decode_failures_total", "Media refused or undecodable",
                                       ["kind", "code"], registry=r)
        self.backend_errors = Counter("portrait_backend_errors_total", "Inference backend failures",
                                      ["backend"], registry=r)
        self.rejected = Counter("portrait_rejected_requests_total", "Requests refused before work",
                                ["reason"], registry=r)
        self.in_flight = Gauge("portrait_in_flight_requests", "Requests being processed", registry=r)
        self.uploads = Gauge("portrait_uploads_in_progress", "Admitted requests whose body is still arriving",
                             registry=r)
        self.backend_up = Gauge("portrait_backend_up", "1 when the inference backend is ready", registry=r)
        self.models = Info("portrait_model", "Model versions served", ["name"], registry=r)
        self.sessions = Counter("portrait_sessions_total", "Live sessions by outcome: created, streamed, judged, "
                                "or the code of a refused stream", ["outcome"], registry=r)
        self.session_streams = Gauge("portrait_session_streams", "Live sessions held by this process "
                                     "(streaming, or waiting for their verdict)", registry=r)
        self.session_bytes = Gauge("portrait_session_media_bytes", "Media bytes held by live sessions", registry=r)
        self.light_score = Histogram("portrait_light_score", "The light check's score per judged session",
                                     buckets=(0.0, 0.2, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0), registry=r)
        self.light_latency = Histogram("portrait_light_latency_seconds", "From a colour's reveal to its reflection "
                                       "on camera, per judged session", buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
                                       registry=r)
