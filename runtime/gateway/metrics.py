"""Prometheus metrics of the gateway, plus the scheduler's numbers fetched from the llm model.

A registry per app (no module-level global state). The scheduler gauges are refreshed from the
`llm` model's stats snapshot on every scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "autoglm_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "autoglm_time_to_first_token_seconds",
            "Time to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "autoglm_inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "autoglm_request_latency_seconds", "Whole generation time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("autoglm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("autoglm_generation_tokens", "Tokens generated", registry=r)
        self.in_flight = Gauge(
            "autoglm_generations_in_flight", "Generations the gateway is reading from Triton", registry=r
        )
        self.running = Gauge("autoglm_running_sequences", "Sequences in the decode batch", registry=r)
        self.waiting = Gauge("autoglm_waiting_sequences", "Requests queued for admission", registry=r)
        self.kv_usage = Gauge("autoglm_kv_cache_usage_ratio", "Fraction of KV blocks in use", registry=r)
        self.prefix_hit_rate = Gauge(
            "autoglm_prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache / looked up",
            registry=r,
        )
        self.prefix_queries = Gauge(
            "autoglm_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache", registry=r
        )
        self.prefix_hits = Gauge(
            "autoglm_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache", registry=r
        )
        # With `serve --replicas N`, each copy's own numbers beside the sums above.
        self.replica_running = Gauge(
            "autoglm_replica_running_sequences",
            "Sequences in a replica's decode batch",
            ["replica"],
            registry=r,
        )
        self.replica_waiting = Gauge(
            "autoglm_replica_waiting_sequences", "Requests queued in a replica", ["replica"], registry=r
        )
        self.replica_kv_usage = Gauge(
            "autoglm_replica_kv_cache_usage_ratio",
            "Fraction of a replica's KV blocks in use",
            ["replica"],
            registry=r,
        )
        self.replica_prefix_hits = Gauge(
            "autoglm_replica_prefix_cache_hit_tokens",
            "Prompt tokens a replica served from its prefix cache",
            ["replica"],
            registry=r,
        )

    def update_scheduler(self, stats: dict) -> None:
        self.running.set(stats.get("running", 0))
        self.waiting.set(stats.get("waiting", 0))
        self.kv_usage.set(stats.get("kv_usage", 0.0))
        queries, hits = stats.get("prefix_queries", 0), stats.get("prefix_hits", 0)
        self.prefix_queries.set(queries)
        self.prefix_hits.set(hits)
        self.prefix_hit_rate.set(hits / queries if queries else 0.0)
        for name, replica in stats.get("replicas", {}).items():
            self.replica_running.labels(name).set(replica.get("running", 0))
            self.replica_waiting.labels(name).set(replica.get("waiting", 0))
            self.replica_kv_usage.labels(name).set(replica.get("kv_usage", 0.0))
            self.replica_prefix_hits.labels(name).set(replica.get("prefix_hits", 0))
