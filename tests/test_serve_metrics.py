"""Observability: the Prometheus /metrics endpoint counts exactly what clients did, and session
lifecycle events are logged as structured lines with the session id."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

EVENTS_LOGGER = "rnnpolicy.serve.sessions"
CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of http://127.0.0.1:port/metrics as ``(sample name, labels) -> value``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent: a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def family(samples, name: str) -> dict[frozenset, float]:
    """Every sample named ``name``, by label set."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


def nonzero(samples, name: str) -> dict[tuple, float]:
    return {tuple(sorted(labels)): v for labels, v in family(samples, name).items() if v}


@pytest.fixture()
def metered(serve_export_dirs):
    models = {name: serve_export_dirs[name] for name in ("q_lstm", "pg_gru", "box_lstm")}
    srv, port = create_server(models, "127.0.0.1:0", ServeConfig(max_sessions=3, session_ttl=0, metrics_port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield srv, policy_pb2_grpc.PolicyServiceStub(channel)
    channel.close()
    srv.stop(None)


def _open(stub, model):
    return stub.CreateSession(pb.CreateSessionRequest(model=model)).session_id


def _code_of(call, *args):
    try:
        call(*args)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_metrics_endpoint_counts_steps_sessions_and_refusals_exactly(metered, caplog):
    srv, stub = metered
    assert isinstance(srv.metrics_port, int) and srv.metrics_port > 0
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    rng = np.random.default_rng(0)
    q5 = lambda: rng.normal(size=5).astype(np.float32).tolist()  # noqa: E731
    g4 = lambda: rng.normal(size=4).astype(np.float32).tolist()  # noqa: E731

    fresh = scrape(srv.metrics_port)  # a new server: every counter 0, every model listed with 0 sessions
    assert not nonzero(fresh, "rnnpolicy_steps_total") and value(fresh, "rnnpolicy_state_bytes_resident") == 0
    assert {dict(k)["model"] for k in family(fresh, "rnnpolicy_sessions_active")} == {"q_lstm", "pg_gru", "box_lstm"}

    # ---- sessions: three open (the limit), the fourth refused
    a, c = _open(stub, "q_lstm"), _open(stub, "q_lstm")
    b = _open(stub, "pg_gru")
    assert _code_of(stub.CreateSession, pb.CreateSessionRequest(model="box_lstm")) == grpc.StatusCode.RESOURCE_EXHAUSTED

    # ---- unary Step on a: 3 fresh steps, a repeat (answered from the cache), then three intended failures
    for seq in (1, 2, 3):
        stub.Step(pb.StepRequest(session_id=a, seq=seq, obs=q5(), episode_start=seq == 1))
    stub.Step(pb.StepRequest(session_id=a, seq=3, obs=q5()))
    assert _code_of(stub.Step, pb.StepRequest(session_id=a, seq=5, obs=q5())) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code_of(stub.Step, pb.StepRequest(session_id=a, seq=4, obs=[0.0] * 4)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code_of(stub.Step, pb.StepRequest(session_id="nope", seq=1, obs=q5())) == grpc.StatusCode.NOT_FOUND

    # ---- StepStream on b: 4 fresh steps, then in-band failures of each kind
    requests = [pb.StepRequest(session_id=b, seq=s, obs=g4(), episode_start=s == 1) for s in (1, 2, 3, 4)]
    requests += [pb.StepRequest(session_id=b, seq=9, obs=g4()),              # FAILED_PRECONDITION
                 pb.StepRequest(session_id=b, seq=5, obs=[1.0] * 7),         # INVALID_ARGUMENT
                 pb.StepRequest(session_id="gone", seq=1, obs=g4())]         # NOT_FOUND
    answers = list(stub.StepStream(iter(requests)))
    assert [CODES[r.error.code] if r.HasField("error") else "OK" for r in answers] == \
        ["OK"] * 4 + ["FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND"]

    # ---- StepBatch over a and c: both step (one 2-row onnxruntime call), then one row of each outcome
    obs2 = rng.normal(size=(2, 5)).astype(np.float32).ravel().tolist()
    r1 = stub.StepBatch(pb.StepBatchRequest(session_ids=[a, c], seqs=[4, 1], obs=obs2, episode_start=[False, True]))
    assert not r1.errors
    r2 = stub.StepBatch(pb.StepBatchRequest(session_ids=[a, c], seqs=[5, 5], obs=obs2))  # c expects 2
    assert [(e.index, CODES[e.code]) for e in r2.errors] == [(1, "FAILED_PRECONDITION")]
    r3 = stub.StepBatch(pb.StepBatchRequest(session_ids=[c, "nope"], seqs=[2, 1], obs=obs2))
    assert [(e.index, CODES[e.code]) for e in r3.errors] == [(1, "NOT_FOUND")]
    r4 = stub.StepBatch(pb.StepBatchRequest(session_ids=[a, c], seqs=[5, 2], obs=obs2))  # both repeats: cached
    assert not r4.errors and list(r4.q_values) == list(r2.q_values[:3]) + list(r3.q_values[:3])

    # ---- close c; a step on it afterwards is NOT_FOUND (no model: the session is gone)
    stub.CloseSession(pb.CloseSessionRequest(session_id=c))
    assert _code_of(stub.Step, pb.StepRequest(session_id=c, seq=3, obs=q5())) == grpc.StatusCode.NOT_FOUND
    assert _code_of(stub.CloseSession, pb.CloseSessionRequest(session_id=c)) == grpc.StatusCode.NOT_FOUND

    m = scrape(srv.metrics_port)
    # steps by model and code: every answered step, a repeat answered from the cache included; a step
    # naming no open session has no model
    assert nonzero(m, "rnnpolicy_steps_total") == {
        (("code", "OK"), ("model", "q_lstm")): 4 + 2 + 1 + 1 + 2,       # Step 3+repeat, batches 2, 1, 1, 2 cached
        (("code", "FAILED_PRECONDITION"), ("model", "q_lstm")): 1 + 1,  # Step seq 5, batch row c seq 5
        (("code", "INVALID_ARGUMENT"), ("model", "q_lstm")): 1,
        (("code", "NOT_FOUND"), ("model", "q_lstm")): 1,                # the batch row "nope" (the batch's model)
        (("code", "OK"), ("model", "pg_gru")): 4,
        (("code", "FAILED_PRECONDITION"), ("model", "pg_gru")): 1,
        (("code", "INVALID_ARGUMENT"), ("model", "pg_gru")): 1,
        (("code", "NOT_FOUND"), ("model", "")): 1 + 1 + 1,              # Step "nope", stream "gone", Step on closed c
    }
    # StepStream observes each message's latency, failed ones included
    assert value(m, "rnnpolicy_step_latency_seconds_count", rpc="StepStream") == 7
    assert value(m, "rnnpolicy_step_latency_seconds_count", rpc="Step") >= 4       # see the test below for failures
    assert value(m, "rnnpolicy_step_latency_seconds_count", rpc="StepBatch") == 4
    for rpc in ("Step", "StepStream", "StepBatch"):
        count = value(m, "rnnpolicy_step_latency_seconds_count", rpc=rpc)
        assert value(m, "rnnpolicy_step_latency_seconds_bucket", rpc=rpc, le="+Inf") == count
        assert 0 < value(m, "rnnpolicy_step_latency_seconds_sum", rpc=rpc) < count * 10
    # rows per onnxruntime call: only fresh steps run (repeats come from the cache); sequential calls
    # never share a batch, so the 2-row StepBatch is the only call of more than one row
    assert value(m, "rnnpolicy_batch_size_count", model="q_lstm") == 3 + 1 + 1 + 1
    assert value(m, "rnnpolicy_batch_size_sum", model="q_lstm") == 3 + 2 + 1 + 1
    assert value(m, "rnnpolicy_batch_size_bucket", model="q_lstm", le="1.0") == 5
    assert value(m, "rnnpolicy_batch_size_count", model="pg_gru") == 4
    assert value(m, "rnnpolicy_batch_size_sum", model="pg_gru") == 4
    assert value(m, "rnnpolicy_batch_size_count", model="box_lstm") == 0
    # sessions
    assert nonzero(m, "rnnpolicy_sessions_created_total") == {(("model", "q_lstm"),): 2, (("model", "pg_gru"),): 1}
    assert nonzero(m, "rnnpolicy_sessions_closed_total") == {(("model", "q_lstm"),): 1}
    assert not nonzero(m, "rnnpolicy_sessions_expired_total")
    assert nonzero(m, "rnnpolicy_sessions_refused_total") == {(("reason", "max_sessions"),): 1}
    _check_gauges(srv, m, {"q_lstm": 1, "pg_gru": 1, "box_lstm": 0})
    assert len(srv.directory) == 2
    # the server's own reading agrees with the scrape
    assert srv.metrics.value("rnnpolicy_steps_total", {"model": "q_lstm", "code": "OK"}) == 10

    # a freed slot admits the next CreateSession; the gauges follow
    d = _open(stub, "box_lstm")
    _check_gauges(srv, scrape(srv.metrics_port), {"q_lstm": 1, "pg_gru": 1, "box_lstm": 1})
    for sid in (a, b, d):
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    end = scrape(srv.metrics_port)
    _check_gauges(srv, end, {"q_lstm": 0, "pg_gru": 0, "box_lstm": 0})
    assert nonzero(end, "rnnpolicy_sessions_closed_total") == {
        (("model", "q_lstm"),): 2, (("model", "pg_gru"),): 1, (("model", "box_lstm"),): 1}

    # structured lifecycle log lines, each with the session id
    lines = [r.getMessage() for r in caplog.records if r.name == EVENTS_LOGGER]
    for sid, model in ((a, "q_lstm"), (b, "pg_gru"), (c, "q_lstm"), (d, "box_lstm")):
        version = srv.models[model].version
        assert _one(lines, "session_created", sid).startswith(
            f"event=session_created session_id={sid} model={model} version={version} principal=- seq=0")
        assert f"model={model}" in _one(lines, "session_closed", sid)
    assert f"seq={5}" in _one(lines, "session_closed", a)  # the last applied seq at close
    refused = [line for line in lines if line.startswith("event=session_refused")]
    assert len(refused) == 1 and "model=box_lstm" in refused[0] and "reason=max_sessions" in refused[0]
    assert not [line for line in lines if "session_expired" in line]


def _one(lines: list[str], event: str, session_id: str) -> str:
    found = [line for line in lines if line.startswith(f"event={event} ") and f"session_id={session_id} " in line]
    assert len(found) == 1, (event, session_id, lines)
    return found[0]


def _check_gauges(srv, samples, expected: dict[str, int]) -> None:
    active = {tuple(sorted(labels)): v for labels, v in family(samples, "rnnpolicy_sessions_active").items()}
    assert active == {(("model", name), ("version", srv.models[name].version)): n for name, n in expected.items()}
    resident = sum(n * srv.models[name].slots.bytes_per_slot for name, n in expected.items())
    assert value(samples, "rnnpolicy_state_bytes_resident") == resident
    assert sum(expected.values()) == 0 or resident > 0


def test_latency_histogram_counts_failed_steps_too(metered):
    """``rnnpolicy_step_latency_seconds`` is the request-to-answer time of *every* answered step, per rpc:
    a refused step is answered too (with its status), as a failed StepStream message already is; a
    histogram that leaves failures out hides slow refusals and disagrees with ``rnnpolicy_steps_total``."""
    srv, stub = metered
    sid = _open(stub, "q_lstm")
    stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=[0.0] * 5))
    for bad in (pb.StepRequest(session_id=sid, seq=3, obs=[0.0] * 5),      # FAILED_PRECONDITION
                pb.StepRequest(session_id=sid, seq=2, obs=[0.0] * 4),      # INVALID_ARGUMENT
                pb.StepRequest(session_id="nope", seq=1, obs=[0.0] * 5)):  # NOT_FOUND
        assert _code_of(stub.Step, bad) != grpc.StatusCode.OK
    bad_batch = pb.StepBatchRequest(session_ids=[sid], seqs=[2], obs=[0.0] * 3)  # obs size: the whole call refused
    assert _code_of(stub.StepBatch, bad_batch) == grpc.StatusCode.INVALID_ARGUMENT
    m = scrape(srv.metrics_port)
    assert value(m, "rnnpolicy_steps_total", model="q_lstm", code="OK") == 1
    assert sum(family(m, "rnnpolicy_steps_total").values()) == 5
    assert value(m, "rnnpolicy_step_latency_seconds_count", rpc="Step") == 4
    assert value(m, "rnnpolicy_step_latency_seconds_count", rpc="StepBatch") == 1


def test_stream_step_latency_is_recorded_before_its_answer_is_sent(metered):
    """A StepStream step is timed when answered, like Step and StepBatch: a client that has its answer
    (and then cancels the stream, as a client done with a session does) finds the step counted. Timing
    it after the ``yield`` instead loses the last step of every cancelled stream and adds the send."""
    srv, stub = metered
    for i in range(1, 11):
        sid = _open(stub, "q_lstm")
        requests: queue.SimpleQueue = queue.SimpleQueue()
        call = stub.StepStream(iter(requests.get, None))
        requests.put(pb.StepRequest(session_id=sid, seq=1, obs=[0.0] * 5))
        assert not next(call).HasField("error")
        assert srv.metrics.value("rnnpolicy_step_latency_seconds_count", {"rpc": "StepStream"}) == i
        call.cancel()
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid))


def test_expired_session_is_counted_logged_and_gone(serve_export_dirs, caplog):
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    srv, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0",
                              ServeConfig(session_ttl=30, metrics_port=0))
    now = [1000.0]
    srv.directory.clock = lambda: now[0]  # idle time passes only when the test says (the reaper reads it too)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        sid = _open(stub, "q_lstm")
        stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=[0.5] * 5, episode_start=True))
        assert value(scrape(srv.metrics_port), "rnnpolicy_sessions_active", model="q_lstm",
                     version=srv.models["q_lstm"].version) == 1
        now[0] += 29.0
        assert srv.expire_idle() == 0 and len(srv.directory) == 1
        now[0] += 2.0
        srv.expire_idle()  # or the reaper did, meanwhile
        assert len(srv.directory) == 0
        try:
            stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=[0.5] * 5))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND and "expired" in exc.details()
        else:
            pytest.fail("a step on an expired session succeeded")
        m = scrape(srv.metrics_port)
        assert nonzero(m, "rnnpolicy_sessions_expired_total") == {(("model", "q_lstm"),): 1}
        assert not nonzero(m, "rnnpolicy_sessions_closed_total")
        assert nonzero(m, "rnnpolicy_sessions_active") == {} and value(m, "rnnpolicy_state_bytes_resident") == 0
        assert nonzero(m, "rnnpolicy_steps_total") == {(("code", "OK"), ("model", "q_lstm")): 1,
                                                       (("code", "NOT_FOUND"), ("model", "")): 1}
        lines = [r.getMessage() for r in caplog.records if r.name == EVENTS_LOGGER]
        expired = _one(lines, "session_expired", sid)
        assert "model=q_lstm" in expired and "seq=1" in expired and "idle_seconds=31.0" in expired
        _one(lines, "session_created", sid)
    finally:
        channel.close()
        srv.stop(None)
    with pytest.raises(OSError):  # stopping the server closes the endpoint
        scrape(srv.metrics_port)


@pytest.mark.parametrize("quiet", [False, True])
def test_serve_cli_metrics_port(serve_export_dirs, quiet):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnpolicy.cli", "serve", "--model", f"q={serve_export_dirs['q_lstm']}",
         "--port", "0", "--metrics-port", "0"] + (["--quiet-sessions"] if quiet else []),
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert "serving q=q/lstm" in line and "/metrics" in line, line
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        metrics_port = int(line.split("metrics=http://127.0.0.1:")[1].split("/")[0])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        sid = _open(stub, "q")
        stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=[0.0] * 5, episode_start=True))
        m = scrape(metrics_port)
        channel.close()
        assert value(m, "rnnpolicy_steps_total", model="q", code="OK") == 1
        assert value(m, "rnnpolicy_sessions_created_total", model="q") == 1  # counted even when not logged
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert (f"event=session_created session_id={sid} model=q" in err) is not quiet
    finally:
        if proc.poll() is None:
            proc.kill()


def test_step_histogram_and_counter_match_prometheus_client():
    """The step path's own histogram and counter expose the same samples as prometheus_client's would:
    an observation equal to a bound falls in that bucket, buckets are cumulative, +Inf counts all."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from rnnpolicy.serve.metrics import StepCounter, StepHistogram

    buckets = (1e-4, 2.5e-4, 1.0)
    observations = [5e-5, 1e-4, 1e-4, 2e-4, 0.9, 1.0, 3.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = StepHistogram("lat_seconds", "doc", "rpc", buckets)
    counter = StepCounter("steps", "doc", ("model", "code"))
    ours.register(histogram)
    ours.register(counter)
    reference = Histogram("lat_seconds", "doc", ("rpc",), buckets=buckets, registry=theirs)
    reference_counter = Counter("steps", "doc", ("model", "code"), registry=theirs)
    for x in observations:
        histogram.labels("Step").observe(x)
        reference.labels("Step").observe(x)
    for labels, n in ((("q", "OK"), 3), (("q", "NOT_FOUND"), 1), (("q", "OK"), 2)):
        counter.inc(labels, n)
        reference_counter.labels(*labels).inc(n)

    def samples(registry):
        return {(s.name, tuple(sorted(s.labels.items())), s.value)
                for family in text_string_to_metric_families(generate_latest(registry).decode())
                for s in family.samples if not s.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert ("lat_seconds_bucket", (("le", "0.0001"), ("rpc", "Step")), 3.0) in samples(ours)
    with pytest.raises(ValueError, match="buckets must increase"):
        StepHistogram("x", "doc", "rpc", (1.0, 0.5))
