"""serve.py's Prometheus metrics, through prometheus_client: requests by endpoint and status, time
to first token and request latency, token counts and rate, and the engine's live sequences."""

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineCounts:
    """A collector for what the engine counts itself: sequences freed before they finished."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        yield CounterMetricFamily("mini_lm_cancelled_sequences",
                                  "sequences freed before they finished (their client went away)",
                                  value=self.engine.cancelled_sequences)


class ServerMetrics:
    """The metrics of one server, in a registry of its own (two apps in one process count apart)."""

    def __init__(self, engine):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("mini_lm_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.time_to_first_token = Histogram(
            "mini_lm_time_to_first_token_seconds", "from a request's arrival to its first token",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.request_seconds = Histogram("mini_lm_request_seconds", "whole requests (not streamed)",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("mini_lm_prompt_tokens", "prompt tokens read",
                                     registry=registry)
        self.generated_tokens = Counter("mini_lm_generated_tokens", "tokens generated",
                                        registry=registry)
        self.lock = threading.Lock()
        self.generated, self.generation_seconds = 0, 0.0
        Gauge("mini_lm_tokens_per_second", "generated tokens over the requests' generation time",
              registry=registry).set_function(self.tokens_per_second)
        Gauge("mini_lm_active_sequences", "sequences in the decoding batch",
              registry=registry).set_function(engine.active_sequences)
        Gauge("mini_lm_waiting_requests", "requests waiting for a place in the batch",
              registry=registry).set_function(engine.waiting_requests)
        registry.register(EngineCounts(engine))

    def count_tokens(self, prompt, generated, seconds):
        self.prompt_tokens.inc(prompt)
        self.generated_tokens.inc(generated)
        with self.lock:
            self.generated += generated
            self.generation_seconds += seconds

    def tokens_per_second(self):
        with self.lock:
            return self.generated / self.generation_seconds if self.generation_seconds else 0.0

    def render(self):
        """The exposition text for GET /metrics."""
        return generate_latest(self.registry)
