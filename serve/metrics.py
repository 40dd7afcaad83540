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
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from rnnpolicy.serve.model import ServedModel
    from rnnpolicy.serve.sessions import Session, SessionEvent

__all__ = ["ServeMetrics"]

_events_log = logging.getLogger("rnnpolicy.serve.sessions")

_LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """The counters and histograms a server updates, plus gauges read from the server at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.steps = Counter("rnnpolicy_steps", "Steps answered, by model and gRPC status code",
                             ("model", "code"), registry=self.registry)
        self.step_latency = Histogram("rnnpolicy_step_latency_seconds", "Request-to-answer time of steps",
                                      ("rpc",), buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("rnnpolicy_batch_size", "Rows per onnxruntime call", ("model",),
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.sessions = {
            event: Counter(f"rnnpolicy_sessions_{event}", f"Sessions {event}", ("model",), registry=self.registry)
            for event in ("created", "closed", "expired", "migrated", "restored")
        }
        self.refused = Counter("rnnpolicy_sessions_refused", "CreateSession calls refused, by limit",
                               ("reason",), registry=self.registry)
        self._versions: Callable[[], list[tuple[ServedModel, int]]] | None = None
        self.registry.register(_SessionGauges(self))
        self._http = None
        self._ok_children: dict[str, Counter] = {}

    def bind_versions(self, versions: Callable[[], list[tuple[ServedModel, int]]]) -> None:
        """Where the scrape-time gauges read ``(model version, open sessions)`` pairs."""
        self._versions = versions

    # ------------------------------------------------------------------ updates

    def count_steps(self, model: str, code: str, n: int = 1) -> None:
        if code == "OK":  # the hot path: one cached child per model
            child = self._ok_children.get(model)
            if child is None:
                child = self._ok_children[model] = self.steps.labels(model, "OK")
            child.inc(n)
        else:
            self.steps.labels(model, code).inc(n)

    def session_event(self, event: SessionEvent, session: Session | None, fields: dict) -> None:
        """The registry's listener: count the event and log it as one ``key=value`` line."""
        model = session.model.name if session is not None else fields.get("model", "")
        if event == "refused":
            self.refused.labels(fields.get("reason", "")).inc()
        else:
            self.sessions[event].labels(model).inc()
        if _events_log.isEnabledFor(logging.INFO):
            parts = [f"event=session_{event}"]
            if session is not None:
                parts += [f"session_id={session.session_id}", f"model={model}", f"version={session.model.version}",
                          f"principal={session.principal or '-'}", f"seq={session.last_seq}"]
            parts += [f"{key}={value if value != '' else '-'}" for key, value in fields.items()
                      if session is None or key != "model"]
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
        for model, count in (self._metrics._versions() if self._metrics._versions else []):
            active.add_metric([model.name, model.version], count)
            resident += count * model.slots.bytes_per_slot
        yield active
        yield GaugeMetricFamily("rnnpolicy_state_bytes_resident",
                                "Bytes of hidden state and cached outputs of open sessions", value=resident)
