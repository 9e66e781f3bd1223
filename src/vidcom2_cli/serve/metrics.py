"""The server's Prometheus metrics (GET /metrics), in a registry of its own per server."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no *_created series beside each counter: they only add noise

# Seconds: a few ms (a cached prefix on a GPU) up to minutes (a long video on a CPU).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)
# The stages an answer reports (answer_figures.STAGES) and the server's own.
STAGES = ("queue", "feature_cache", "video_decode", "preprocess", "vision", "compress",
          "prefill", "decode", "total")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("vidcom2_requests", "Chat completion requests by outcome "
                                "(ok, bad_request, unauthorized, forbidden, not_found, "
                                "too_large, unavailable, timeout, cancelled, error).",
                                ["outcome"], registry=registry)
        self.queue_length = Gauge("vidcom2_queue_length", "Requests admitted and not yet "
                                  "picked up by the engine.", registry=registry)
        self.in_flight = Gauge("vidcom2_requests_in_flight", "Requests being answered.",
                               registry=registry)
        self.prompt_tokens = Counter("vidcom2_prompt_tokens", "Prompt tokens the language "
                                     "model read (after compression).", registry=registry)
        self.completion_tokens = Counter("vidcom2_completion_tokens", "Generated tokens.",
                                         registry=registry)
        self.visual_full = Counter("vidcom2_visual_tokens_full", "Video tokens before "
                                   "compression.", registry=registry)
        self.visual_kept = Counter("vidcom2_visual_tokens_kept", "Video tokens kept.",
                                   registry=registry)
        self.stage_seconds = Histogram("vidcom2_stage_seconds", "Time per request in each "
                                       "stage.", ["stage"], buckets=_LATENCY_BUCKETS,
                                       registry=registry)
        self.feature_cache = Counter("vidcom2_feature_cache", "On-disk feature cache lookups "
                                     "by result.", ["result"], registry=registry)
        self.prefix_cache = Counter("vidcom2_prefix_cache", "In-memory prefix cache lookups "
                                    "by result.", ["result"], registry=registry)
        self.prefix_cache_bytes = Gauge("vidcom2_prefix_cache_bytes", "Bytes held by the "
                                        "prefix cache.", registry=registry)
        self.prefix_cache_entries = Gauge("vidcom2_prefix_cache_entries", "Videos in the "
                                          "prefix cache.", registry=registry)
        self.engine_batches = Counter("vidcom2_engine_batches", "Generate calls the engine "
                                      "ran (each answers one or more requests).",
                                      registry=registry)
        self.batch_size = Histogram("vidcom2_batch_size", "Requests per generate call.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry)
        self.encoder_runs = Counter("vidcom2_vision_encoder_runs", "Videos through the vision "
                                    "encoder (feature-cache hits and cached prefixes skip "
                                    "it).", registry=registry)

    def answered(self, fields: dict[str, Any], queue_s: float) -> None:
        tokens = fields["tokens"]
        self.prompt_tokens.inc(tokens["prompt_kept"])
        self.completion_tokens.inc(tokens["generated"])
        self.visual_full.inc(tokens["visual_full"])
        self.visual_kept.inc(tokens["visual_kept"])
        self.stage_seconds.labels("queue").observe(queue_s)
        for stage in STAGES[1:]:
            value = fields["timing_ms"].get(stage)
            if value:
                self.stage_seconds.labels(stage).observe(value / 1000.0)

    def text(self) -> bytes:
        return generate_latest(self.registry)
