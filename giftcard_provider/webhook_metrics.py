"""Webhook delivery figures for Prometheus, read from Redis at scrape time by the web process.

The worker is a separate process (a Heroku worker dyno takes no HTTP traffic), so it serves no
metrics itself: webhook_lane.lua keeps each endpoint's counters and latency histogram in Redis
(keys.py: gc:{w<id>}:stats), in the same step that moves its cursor, and the web's /metrics reads
them here with what is pending (from every bucket's log tail and the endpoint's cursor), the lanes
retrying, the dead letters held and the live workers. A scrape costs six round trips whatever the
traffic; if Redis cannot be read these families are left out of it (the failure counted), never
the whole page.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .observability import redis_error
from .records import WebhookStats, redis_time_ms
from .webhooks import FAILURE_KINDS, LATENCY_BOUNDS, Webhooks


class WebhooksCollector:
    def __init__(self, store):
        self.store = store

    def collect(self):
        try:
            families = self._families()
        except Exception as exc:  # a scrape must answer: the webhook families are absent this time
            redis_error("metrics", exc)
            return
        yield from families

    def _families(self) -> list:
        hooks = Webhooks(self.store, for_metrics=True)
        client = self.store.calls.raw
        endpoints = hooks.endpoints()
        pending = hooks.pending(endpoints) if endpoints else {}
        now_ms = redis_time_ms(client.time())  # its own round trip: a cluster pipeline refuses TIME
        pipe = client.pipeline(transaction=False)
        pipe.zrange(self.store.keys.webhook_workers(), 0, -1, withscores=True)
        for e in endpoints:
            k = self.store.keys.webhook(e.id)
            pipe.hgetall(k["stats"])
            pipe.hlen(k["retry"])
            pipe.xlen(k["dead"])
        workers, *rest = pipe.execute()

        live = GaugeMetricFamily(
            "giftcard_webhook_workers", "Webhook workers alive (heartbeat within their lease): 0 means nothing delivers"
        )
        live.add_metric([], sum(1 for _, expires in workers if expires > now_ms))
        gauges = {
            "pending": GaugeMetricFamily(
                "giftcard_webhook_events_pending",
                "Events of the log an endpoint has still to handle (an upper bound on replayed lanes not caught up)",
                labels=["endpoint"],
            ),
            "paused": GaugeMetricFamily("giftcard_webhook_paused", "1 if the endpoint is paused", labels=["endpoint"]),
            "retrying": GaugeMetricFamily(
                "giftcard_webhook_retrying_lanes",
                "Lanes (buckets) whose head event failed and waits for its next attempt",
                labels=["endpoint"],
            ),
            "dead": GaugeMetricFamily(
                "giftcard_webhook_dead_letters", "Dead letters held for the endpoint now", labels=["endpoint"]
            ),
        }
        delivered = CounterMetricFamily(
            "giftcard_webhook_deliveries", "Events delivered (answered 2xx) by the worker", labels=["endpoint"]
        )
        failed = CounterMetricFamily(
            "giftcard_webhook_failed_attempts",
            "Delivery attempts that failed, by kind (timeout, connection, http_3xx/4xx/5xx, gone)",
            labels=["endpoint", "kind"],
        )
        given_up = CounterMetricFamily(
            "giftcard_webhook_dead_lettered", "Events given up after WEBHOOK_MAX_ATTEMPTS", labels=["endpoint"]
        )
        trimmed = CounterMetricFamily(
            "giftcard_webhook_events_trimmed",
            "Events the retention trimmed from the log before the endpoint had them: never delivered",
            labels=["endpoint"],
        )
        latency = HistogramMetricFamily(
            "giftcard_webhook_delivery_latency_seconds",
            "From an event's append to the log to its 2xx answer being recorded (Redis clock)",
            labels=["endpoint"],
        )
        for i, e in enumerate(endpoints):
            stats_flat, retrying, dead = rest[3 * i : 3 * i + 3]
            stats = WebhookStats.from_hash(stats_flat)
            gauges["pending"].add_metric([e.id], pending[e.id])
            gauges["paused"].add_metric([e.id], int(e.paused))
            gauges["retrying"].add_metric([e.id], retrying)
            gauges["dead"].add_metric([e.id], dead)
            delivered.add_metric([e.id], stats.delivered)
            for kind in FAILURE_KINDS:
                failed.add_metric([e.id, kind], stats.failures.get(kind, 0))
            given_up.add_metric([e.id], stats.dead)
            trimmed.add_metric([e.id], stats.trimmed)
            cumulative, buckets = 0, []
            for n, bound in enumerate(LATENCY_BOUNDS, start=1):
                cumulative += stats.latency_counts.get(n, 0)
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", cumulative + stats.latency_counts.get(len(LATENCY_BOUNDS) + 1, 0)))
            latency.add_metric([e.id], buckets, stats.latency_sum_ms / 1000)
        return [live, *gauges.values(), delivered, failed, given_up, trimmed, latency]


def webhooks_text(store) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WebhooksCollector(store))
    return generate_latest(registry)
