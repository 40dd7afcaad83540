"""Prometheus metrics of one server, and the structured log line of each session lifecycle event.

Each server has its own ``CollectorRegistry`` (several servers in one process, as in tests, never
share counters); ``--metrics-port`` exposes it over HTTP at ``/metrics``. Names:

- ``rnnpolicy_steps_total{model,code}``: steps answered, by model and gRPC status code name
  (a StepBatch counts one step per row);
- ``rnnpolicy_step_latency_seconds{rpc}``: time from request to answer, per Step, per StepStream
  step and per StepBatch call;
- ``rnnpolicy_batch_size{model}``: rows per onnxruntime call;
- ``rnnpolicy_sessions_active{model,version}``, ``rnnpolicy_state_bytes_resident``: read at scrape time;
- ``rnnpolicy_sessions_created_total{model}``, ``..._closed_total``, ``..._expired_total``,
  ``..._migrated_total``, ``..._restored_total``, ``rnnpolicy_sessions_refused_total{reason}``.

The three per-step metrics are updated on every step, so they are kept by :class:`StepCounter` and
:class:`StepHistogram` (one lock, a dict or a bisect: about 1 us an update, where prometheus_client's
own ``Histogram.observe`` takes about 2 us and ``Counter.inc`` 1 us) and turned into Prometheus
samples when scraped.
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["ServeMetrics", "VersionSessions"]

VersionSessions = tuple[str, str, int, int]
"""A model version's ``(name, version, open sessions, bytes of state per session)``."""

_events_log = logging.getLogger("rnnpolicy.serve.sessions")

_LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """The counters and histograms a server updates, plus gauges read from the server at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.steps = StepCounter("rnnpolicy_steps", "Steps answered, by model and gRPC status code", ("model", "code"))
        self.step_latency = StepHistogram("rnnpolicy_step_latency_seconds", "Request-to-answer time of steps", "rpc",
                                          _LATENCY_BUCKETS)
        self.batch_size = StepHistogram("rnnpolicy_batch_size", "Rows per onnxruntime call", "model", _BATCH_BUCKETS)
        for metric in (self.steps, self.step_latency, self.batch_size):
            self.registry.register(metric)
        self.sessions = {
            event: Counter(f"rnnpolicy_sessions_{event}", f"Sessions {event}", ("model",), registry=self.registry)
            for event in ("created", "closed", "expired", "migrated", "restored", "claimed")
        }
        self.refused = Counter("rnnpolicy_sessions_refused", "CreateSession calls refused, by limit",
                               ("reason",), registry=self.registry)
        self._versions: Callable[[], list[VersionSessions]] | None = None
        self.registry.register(_SessionGauges(self))
        self._http = None

    def bind_versions(self, versions: Callable[[], list[VersionSessions]]) -> None:
        """Where the scrape-time gauges read each model version's open sessions and bytes per session."""
        self._versions = versions

    # ------------------------------------------------------------------ updates

    def count_steps(self, model: str, code: str, n: int = 1) -> None:
        self.steps.inc((model, code), n)

    def session_event(self, event: str, fields: dict) -> None:
        """The session directory's listener: count the event and log it as one ``key=value`` line."""
        if event == "refused":
            self.refused.labels(fields.get("reason", "")).inc()
        else:
            self.sessions[event].labels(fields.get("model", "")).inc()
        if _events_log.isEnabledFor(logging.INFO):
            parts = [f"event=session_{event}"]
            parts += [f"{key}={value if value != '' else '-'}" for key, value in fields.items()]
            _events_log.info(" ".join(parts))

    # ------------------------------------------------------------------ HTTP

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` on ``host:port`` (0 picks a free port); return the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent), e.g. ``value("rnnpolicy_steps_total", {"code": "OK"})``
        summed over the labels not given."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total


class _SessionGauges:
    """Gauges computed when scraped: open sessions per model version and the state bytes they hold."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return [GaugeMetricFamily("rnnpolicy_sessions_active", "Open sessions", labels=("model", "version")),
                GaugeMetricFamily("rnnpolicy_state_bytes_resident", "Bytes of hidden state and cached outputs of open sessions")]

    def collect(self):
        active = GaugeMetricFamily("rnnpolicy_sessions_active", "Open sessions", labels=("model", "version"))
        resident = 0
        for name, version, count, bytes_per_session in (self._metrics._versions() if self._metrics._versions else []):
            active.add_metric([name, version], count)
            resident += count * bytes_per_session
        yield active
        yield GaugeMetricFamily("rnnpolicy_state_bytes_resident",
                                "Bytes of hidden state and cached outputs of open sessions", value=resident)


class StepCounter:
    """A counter with labels, for the step path: ``inc(labels, n)`` under one lock; a collector for the registry."""

    def __init__(self, name: str, documentation: str, label_names: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = label_names
        self._counts: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, labels: tuple[str, ...], n: float = 1) -> None:
        with self._lock:
            self._counts[labels] = self._counts.get(labels, 0) + n

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.label_names)]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        with self._lock:
            counts = list(self._counts.items())
        for labels, value in counts:
            family.add_metric(list(labels), value)
        yield family


class StepHistogram:
    """A histogram with one label, for the step path: ``labels(value).observe(x)`` is a bisect and three
    additions under one lock; a collector for the registry."""

    def __init__(self, name: str, documentation: str, label_name: str, buckets: tuple[float, ...]) -> None:
        if list(buckets) != sorted(buckets):
            raise ValueError(f"histogram buckets must increase, got {buckets}")
        self.name = name
        self.documentation = documentation
        self.label_name = label_name
        self.buckets = tuple(float(b) for b in buckets)
        self._children: dict[str, _HistogramChild] = {}
        self._lock = threading.Lock()

    def labels(self, value: str) -> _HistogramChild:
        with self._lock:
            child = self._children.get(value)
            if child is None:
                child = self._children[value] = _HistogramChild(self.buckets, self._lock)
            return child

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=(self.label_name,))]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=(self.label_name,))
        with self._lock:
            snapshot = [(value, list(child.counts), child.total) for value, child in self._children.items()]
        for value, counts, total in snapshot:
            cumulative, running = [], 0
            for bound, count in zip((*self.buckets, float("inf")), counts):
                running += count
                cumulative.append((floatToGoString(bound), running))
            family.add_metric([value], cumulative, sum_value=total)
        yield family


class _HistogramChild:
    __slots__ = ("counts", "total", "_bounds", "_lock")

    def __init__(self, bounds: tuple[float, ...], lock: threading.Lock) -> None:
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last is +Inf
        self.total = 0.0
        self._bounds = bounds
        self._lock = lock

    def observe(self, amount: float) -> None:
        index = bisect.bisect_left(self._bounds, amount)  # the first bound >= amount, as Prometheus's le
        with self._lock:
            self.counts[index] += 1
            self.total += amount
