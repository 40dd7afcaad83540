"""Bad-input fuzzing of the whole PolicyService surface (issue 5).

Hypothesis sends one in-process server random bytes, mutated and wrongly typed messages, messages
around the size limit, and well-formed requests with hostile field values: unicode, empty and huge
session ids, seq 0 and 2**64-1, observations of any length with NaN/Inf/huge floats, StepBatch
arrays of mismatched lengths with duplicate, unknown and mixed-model ids, state tensors of any
shape, unknown model names. Every call must end with a status a client can act on: a code in
ANSWERS and, when not OK, a short message without traceback text (in-band StepError and
BatchRowError codes alike).

Meanwhile one "good" session per model is mirrored by an offline onnxruntime rollout of the same
ONNX file, and the fuzz targets the good sessions' ids on purpose. After every call the mirror
applies exactly what the server must have done (a request it accepted steps, resets, installs or
closes; a refused one changes nothing), and the good sessions' outputs, state and seq must match
it. The whole RPC list comes from the service descriptor, so a method added to the proto is
fuzzed too (generically: by its status only; the good sessions are still checked after it).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter, deque

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rnnpolicy.export.interface import ONNX_FILE
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

SC = grpc.StatusCode
MAX_MESSAGE = 64 * 1024  # the server's max_message_bytes: small, so "too large" is cheap to send
MAX_ROWS = 16            # the server's max_batch_rows
MAX_SCRATCH = 24         # sessions the fuzz itself opened and keeps open at most (the oldest are closed)
# A status message travels as the grpc-message trailer, percent-encoded (up to 3 bytes per UTF-8
# byte), and a client refuses trailers over 8 KiB (16 KiB hard: "Stream removed (received metadata
# size exceeds ...)"), so a message that echoes its input unbounded loses its own status. 2 KiB of
# UTF-8 always fits; in-band messages are held to the same bound.
MAX_DETAILS_BYTES = 2048
ANSWERS = frozenset({SC.OK, SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.FAILED_PRECONDITION, SC.RESOURCE_EXHAUSTED,
                     SC.PERMISSION_DENIED, SC.UNAUTHENTICATED})
NO_SUCH_SESSION = frozenset({SC.NOT_FOUND, SC.PERMISSION_DENIED})
# The server receives raw bytes and parses them itself (serve/handlers.py): a payload that does
# not parse as the method's request type (corrupt wire format, a string field that is not UTF-8,
# a message of another type) is INVALID_ARGUMENT naming the expected type, in-band on StepStream,
# whose stream carries on. (Left to grpcio, it would be INTERNAL "Exception deserializing
# request!", a logged traceback, the end of the stream, and sometimes a server.stop() that hangs.)
UNPARSABLE = "the request is not a valid rnnpolicy.v1."
TOO_LARGE = "Received message larger than max"  # grpcio's own RESOURCE_EXHAUSTED for a request over the limit

SERVICE = pb.DESCRIPTOR.services_by_name["PolicyService"]


def echoed(session_id: str) -> str:
    """What an in-band error names: the request's session id, or "" for one longer than any real id (64+ chars),
    so that an answer never grows with hostile input."""
    return session_id if len(session_id) <= 64 else ""
METHODS = {m.name: m for m in SERVICE.methods}
REQUEST = {name: message_factory.GetMessageClass(m.input_type) for name, m in METHODS.items()}
RESPONSE = {name: message_factory.GetMessageClass(m.output_type) for name, m in METHODS.items()}
ALL_TYPES = sorted({*REQUEST.values(), *RESPONSE.values(), pb.Tensor, pb.ModelInfo, pb.StepError,
                    pb.BatchRowError}, key=lambda t: t.DESCRIPTOR.full_name)
CODE = {c.value[0]: c for c in SC}
HEADS = ("q_values", "logits", "mean", "log_std")

MODERATE = st.floats(-100.0, 100.0, width=32)
NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
ANY_FLOAT = st.floats(width=32)  # NaN, +-Inf, +-3.4e38, subnormals, -0.0
HUGE_TEXT = st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(1000, 20_000))
LONG_TEXT = st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(200, 3000))  # a StepBatch row's
UINT64 = st.integers(0, 2**64 - 1)

ID_KINDS = ["good", "good", "good", "mangled", "text", "empty", "huge", "ascii", "scratch", "gone"]
MANGLES = [lambda s: s[:-1], lambda s: s + "A", str.upper, str.swapcase, lambda s: " " + s, lambda s: s + "\0",
           lambda s: s[::-1], lambda s: s * 2, lambda s: s[:4]]

SEEN: Counter = Counter()  # (method, status) -> calls, for the summary the last test prints


def fuzz(max_examples: int):
    """``@given(data)`` with settings for a stateful world: no example database, no shrinking (each
    example changes the server, so a replay is not the same test), no deadline on a loaded box."""

    def wrap(fn):
        return settings(max_examples=max_examples, deadline=None, database=None, phases=(Phase.generate,),
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(
            given(data=st.data())(fn))

    return wrap


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pad_to(payload: bytes, size: int) -> bytes:
    """``payload`` plus an unknown length-delimited field 9999 (which parsing skips), ``size`` bytes in all when it fits."""
    tag = _varint(9999 << 3 | 2)
    for width in (1, 2, 3, 4):
        n = size - len(payload) - len(tag) - width
        if n >= 0 and len(_varint(n)) == width:
            return payload + tag + _varint(n) + b"\0" * n
    return payload + tag + b"\0"


def parse(message_type, payload: bytes):
    """``payload`` as ``message_type``, as the server parses it; None when it is too large or does not parse."""
    if len(payload) > MAX_MESSAGE:
        return None
    try:
        return message_type.FromString(payload)
    except DecodeError:
        return None


def stops(server, timeout: float = 15.0) -> bool:
    """``server.stop(None)`` on a daemon thread: True when it returned within ``timeout`` s (never hang the suite)."""
    thread = threading.Thread(target=server.stop, args=(None,), name="fuzz-server-stop", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def brief(msg) -> str:
    """A short one-line rendering of a message (str() of a 16,000-value obs takes a while)."""
    parts = []
    for f, v in msg.ListFields():
        show = (lambda x: brief(x)) if f.type == FieldDescriptor.TYPE_MESSAGE else \
            (lambda x: repr(x) if len(repr(x)) <= 60 else f"{repr(x)[:50]}... ({len(x)} chars)")
        if f.is_repeated:
            parts.append(f"{f.name}=[{', '.join(show(x) for x in v[:4])}{', ...' if len(v) > 4 else ''}] ({len(v)})")
        else:
            parts.append(f"{f.name}={show(v)}")
    return f"{type(msg).__name__}({', '.join(parts)})"


def check_message(message: str, where: str) -> None:
    assert message.strip(), f"{where}: a refusal without a message"
    assert "Traceback" not in message and 'File "' not in message, f"{where}: traceback text: {message[:500]!r}"
    assert "metadata size exceeds" not in message and not message.startswith("Stream removed"), \
        f"{where}: the server's status was lost on the way: {message!r}"
    size = len(message.encode("utf-8", "surrogatepass"))
    assert size <= MAX_DETAILS_BYTES, \
        f"{where}: a {size}-byte status message (more than {MAX_DETAILS_BYTES}): {message[:200]!r}..."


# ------------------------------------------------------------------------------------------- the mirror


class Good:
    """A well-behaved session and its offline twin: the same ONNX graph stepped alone with batch 1."""

    def __init__(self, world: World, name: str) -> None:
        self.name = name
        self.info = world.infos[name]
        self.graph = world.graphs[name]
        self.dim = int(self.info.obs_shape[0])
        outputs = {o.name: o.shape for o in self.graph.get_outputs()}
        self.heads = [n for n in outputs if not n.startswith("next_")]
        self.width = {n: (s[1] if len(s) > 1 else 1) for n, s in outputs.items()}
        self.state_shapes = {i.name: (i.shape[0], i.shape[2]) for i in self.graph.get_inputs()
                             if i.name.startswith("state_")}
        self.discrete = self.info.action.kind == "discrete"
        self.sampled = self.info.kind == "policy"  # deterministic=False samples the action
        self.open(world.stub)

    def open(self, stub) -> None:
        self.sid = stub.CreateSession(pb.CreateSessionRequest(model=self.name, seed=7), timeout=30).session_id
        self.state = {n: np.zeros((layers, 1, hidden), np.float32) for n, (layers, hidden) in self.state_shapes.items()}
        self.seq = 0
        self.last: dict[str, np.ndarray] | None = None  # outputs of the last applied step (a repeat answers them)

    # -------------------------------------------------------------- what the server answered

    def from_step(self, r: pb.StepResponse) -> dict[str, np.ndarray]:
        out = {h: np.asarray(getattr(r, h), np.float32) for h in self.heads if h in HEADS}
        if "value" in self.heads:
            assert r.HasField("value"), f"{self.name}: a policy's step answers its value"
            out["value"] = np.float32([r.value])
        out["action"] = (np.float32([r.discrete_action]) if self.discrete
                         else np.asarray(r.continuous_action, np.float32))
        return out

    def from_batch(self, r: pb.StepBatchResponse, i: int) -> dict[str, np.ndarray]:
        out = {}
        for h in self.heads:
            w = self.width[h]
            if h in HEADS:
                out[h] = np.asarray(getattr(r, h)[i * w:(i + 1) * w], np.float32)
        if "value" in self.heads:
            out["value"] = np.float32(r.values[i:i + 1])
        out["action"] = (np.float32(r.discrete_actions[i:i + 1]) if self.discrete
                         else np.asarray(r.continuous_actions[i * self.width["action"]:
                                                              (i + 1) * self.width["action"]], np.float32))
        return out

    # -------------------------------------------------------------- what the server must have done

    def expect(self, seq: int, obs_ok: bool) -> set:
        """Statuses allowed for a step with ``seq`` whose observation is (not) a finite obs_dim vector."""
        nxt, repeat = seq == self.seq + 1, seq == self.seq and seq > 0
        if obs_ok and (nxt or repeat):
            return {SC.OK}
        allowed = set()
        if not obs_ok:
            allowed.add(SC.INVALID_ARGUMENT)
            if repeat:  # a retry may be answered from the cache before its observation is looked at
                allowed.add(SC.OK)
        if not (nxt or repeat):
            allowed.add(SC.FAILED_PRECONDITION)
        return allowed

    def stepped(self, seq: int, obs: np.ndarray, start: bool, deterministic: bool, got: dict | None,
                where: str) -> None:
        """The server applied a step: a repeat must be the cached answer, the next seq one step of the twin
        (``got`` None: a step applied whose answer never arrived)."""
        if seq == self.seq:
            assert seq > 0, f"{where}: OK for seq 0"
            if got is not None and self.last is not None:
                for h, want in self.last.items():
                    np.testing.assert_array_equal(got[h], want, err_msg=f"{where}: repeat of seq {seq}, {h}")
            SEEN["good session", "repeat answered from the cache"] += 1
            return
        assert seq == self.seq + 1, f"{where}: OK for seq {seq}, expected {self.seq + 1}"
        feeds = {"obs": obs.reshape(1, self.dim), "episode_start": np.float32([float(start)]), **self.state}
        want = dict(zip([o.name for o in self.graph.get_outputs()], self.graph.run(None, feeds)))
        for h in self.heads if got is not None else ():
            expected = np.asarray(want[h], np.float32).reshape(-1)
            assert got[h].shape == expected.shape, f"{where}: {h} has {got[h].shape[0]} values, expected {expected.size}"
            if h == "action" and self.sampled and not deterministic:
                self._check_sampled(got[h], where)
            else:
                np.testing.assert_allclose(got[h], expected, rtol=1e-5, atol=1e-5, err_msg=f"{where}: {self.name} {h}")
        for name in self.state:
            self.state[name] = np.asarray(want["next_" + name], np.float32)
        self.seq, self.last = seq, got
        SEEN["good session", "stepped"] += 1

    def _check_sampled(self, action: np.ndarray, where: str) -> None:
        if self.discrete:
            assert 0 <= action[0] < self.info.action.n, f"{where}: sampled action {action[0]} out of range"
        else:
            low, high = np.asarray(self.info.action.low), np.asarray(self.info.action.high)
            assert not ((action < low) | (action > high)).any(), f"{where}: sampled action {action} out of bounds"

    def set_state(self, tensors) -> None:
        for name, t in zip(self.state, tensors):
            layers, hidden = self.state_shapes[name]
            self.state[name] = np.asarray(t.data, np.float32).reshape(layers, 1, hidden)
        SEEN["good session", "state installed"] += 1

    def reset(self) -> None:
        for name in self.state:
            self.state[name][...] = 0.0
        SEEN["good session", "reset"] += 1

    def valid_state(self, tensors) -> bool:
        if len(tensors) != len(self.state_shapes):
            return False
        for (layers, hidden), t in zip(self.state_shapes.values(), tensors):
            data = np.asarray(t.data, np.float32)
            if list(t.shape) != [layers, hidden] or data.size != layers * hidden or not np.isfinite(data).all():
                return False
        return True

    def check_state(self, r: pb.GetSessionStateResponse, where: str) -> None:
        assert r.seq == self.seq, f"{where}: {self.name} session at seq {r.seq}, expected {self.seq}"
        assert list(r.names) == list(self.state), f"{where}: state names {list(r.names)}"
        for name, t in zip(self.state, r.state):
            layers, hidden = self.state_shapes[name]
            assert list(t.shape) == [layers, hidden], f"{where}: {name} shape {list(t.shape)}"
            np.testing.assert_allclose(np.asarray(t.data, np.float32).reshape(layers, hidden), self.state[name][:, 0, :],
                                       rtol=1e-5, atol=1e-5, err_msg=f"{where}: {self.name} {name}")


class _Errors(logging.Handler):
    """Collects the server's ERROR log records: each is an unexpected exception inside a handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class World:
    """The server, a channel to it, the good sessions with their twins, and the fuzz's own sessions."""

    def __init__(self, server, port: int, dirs) -> None:
        self.server = server
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.calls = {}
        for name, m in METHODS.items():
            kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
                    (True, True): "stream_stream"}[m.client_streaming, m.server_streaming]
            self.calls[name] = getattr(self.channel, kind)(f"/{SERVICE.full_name}/{name}",
                                                           request_serializer=None, response_deserializer=None)
        self.infos = {m.name: m for m in self.stub.ListModels(pb.ListModelsRequest(), timeout=30).models}
        self.graphs = {name: ort.InferenceSession(str(dirs[name] / ONNX_FILE), providers=["CPUExecutionProvider"])
                       for name in self.infos}
        self.good = [Good(self, name) for name in sorted(self.infos)]
        self.scratch: deque[str] = deque()     # open sessions the fuzz created
        self.scratch_dim: dict[str, int] = {}  # their observation sizes
        self.gone: deque[str] = deque(maxlen=64)  # closed ones
        self.rng = random.Random(5)
        self.touched: set[str] = set()  # good session ids named in payloads sent since the last verify
        self.mangled: dict[str, Good] = {}  # near-miss ids -> the good session they were made from
        self.errors = _Errors()
        logging.getLogger("rnnpolicy.serve").addHandler(self.errors)

    def close(self) -> None:
        logging.getLogger("rnnpolicy.serve").removeHandler(self.errors)
        self.channel.close()

    def good_of(self, session_id: str) -> Good | None:
        return next((g for g in self.good if g.sid == session_id), None)

    def dim_of(self, session_id: str) -> int | None:
        """The observation size of an open session (good or the fuzz's own), None for any other id."""
        g = self.good_of(session_id)
        return g.dim if g else (self.scratch_dim.get(session_id) if session_id in self.scratch else None)

    def like(self, session_id: str) -> Good | None:
        """The good session ``session_id`` names, or was made from (a near miss gets requests valid for that one)."""
        return self.good_of(session_id) or self.mangled.get(session_id)

    # ---------------------------------------------------------------------------- strategies

    # Every draw's constraints depend on earlier draws only, never on the server's state (Hypothesis
    # replays choice prefixes): state picks values, e.g. which open session index k names, or seq "next".

    def session_id(self, data, good: bool = True, huge=HUGE_TEXT) -> str:
        kind = data.draw(st.sampled_from(ID_KINDS if good else ID_KINDS[3:]), label="session_id")
        if kind in ("good", "mangled"):
            g = self.good[data.draw(st.integers(0, len(self.good) - 1))]
            if kind == "good":
                return g.sid
            near = data.draw(st.sampled_from(MANGLES))(g.sid)
            self.mangled[near] = g
            return near
        if kind in ("scratch", "gone"):
            pool = self.scratch if kind == "scratch" else self.gone
            k = data.draw(st.integers(0, 63))
            return pool[k % len(pool)] if pool else "no-such-session"
        return data.draw({"text": st.text(max_size=24), "ascii": st.text(st.characters(codec="ascii"), max_size=8),
                          "empty": st.just(""), "huge": huge}[kind])

    def seq_for(self, data, session_id: str) -> int:
        g = self.like(session_id)
        last = g.seq if g else 0
        kind = data.draw(st.sampled_from(["next", "next", "repeat", "skip", "back", "zero", "max", "any"]), label="seq")
        return {"next": last + 1, "repeat": last, "skip": last + 2, "back": max(last - 1, 0), "zero": 0,
                "max": 2**64 - 1}.get(kind) if kind != "any" else data.draw(UINT64)

    def floats_for(self, data, n: int, good: bool) -> list[float]:
        element = st.one_of(MODERATE, MODERATE, NONFINITE) if good else ANY_FLOAT
        return data.draw(st.one_of(
            st.lists(MODERATE, min_size=n, max_size=n),                       # well-formed
            st.lists(element, min_size=n, max_size=n),                        # NaN / Inf (/ huge) somewhere
            st.lists(element, max_size=2 * n + 2),                            # any length, empty included
            st.builds(lambda v, k: [v] * k, element, st.integers(100, 4000)),  # long (past the size limit: see below)
        ), label="floats")

    def step_request(self, data) -> pb.StepRequest:
        sid = self.session_id(data)
        g = self.like(sid)
        if g is not None and data.draw(st.integers(0, 3), label="valid") == 0:
            # valid for the good session named (or nearly named: then it must not step that session)
            seq, obs = g.seq + 1, data.draw(st.lists(MODERATE, min_size=g.dim, max_size=g.dim))
        else:
            dim = g.dim if g else data.draw(st.sampled_from([3, 4, 5]))
            seq, obs = self.seq_for(data, sid), self.floats_for(data, dim, g is not None)
        return pb.StepRequest(session_id=sid, seq=seq, obs=obs, episode_start=data.draw(st.booleans()),
                              deterministic=data.draw(st.booleans()))

    def batch_request(self, data) -> pb.StepBatchRequest:
        n = data.draw(st.sampled_from([*range(7)] * 3 + [MAX_ROWS - 1, MAX_ROWS, MAX_ROWS + 1]), label="rows")
        if n <= 6 and data.draw(st.integers(0, 3), label="duplicates") == 0:
            pool = [self.session_id(data, huge=LONG_TEXT) for _ in range(3)]
            ids = [data.draw(st.sampled_from(pool)) for _ in range(n)]
        else:  # distinct ids (a good one repeated becomes unknown); a batch past the row limit: unknown ones
            ids = []
            for i in range(n):
                sid = self.session_id(data, good=n <= 6, huge=LONG_TEXT)
                ids.append(sid if sid not in ids else f"{sid}#{i}")
        seqs = [self.seq_for(data, i) for i in ids]
        if data.draw(st.integers(0, 9)) == 0:
            seqs = seqs[:-1] if seqs and data.draw(st.booleans()) else seqs + [1]
        # The server takes the batch's model from its first open session: obs are sized for that one,
        # cut from a draw for the largest obs_dim (an open session's size is state, not a draw: see session_id).
        dim = next((d for d in map(self.dim_of, ids) if d), None)
        element = st.one_of(MODERATE, MODERATE, NONFINITE) if any(map(self.like, ids)) else ANY_FLOAT
        kind = data.draw(st.sampled_from(["finite"] * 2 + ["some NaN/Inf"] * 2 + ["any length"]), label="obs")
        fallback = data.draw(st.sampled_from(sorted({g.dim for g in self.good})))  # no open session named
        size = n * max(g.dim for g in self.good)
        obs = data.draw({"finite": st.lists(MODERATE, min_size=size, max_size=size),
                         "some NaN/Inf": st.lists(element, min_size=size, max_size=size),
                         "any length": st.lists(MODERATE, max_size=size + 6)}[kind])
        if kind != "any length":
            obs = obs[:n * (dim or fallback)]
        starts = data.draw(st.sampled_from(["none", "one each", "one each", "any"]).flatmap(lambda kind: {
            "none": st.just([]), "one each": st.lists(st.booleans(), min_size=n, max_size=n),
            "any": st.lists(st.booleans(), max_size=8)}[kind]), label="episode_start")
        return pb.StepBatchRequest(session_ids=ids, seqs=seqs, obs=obs, episode_start=starts,
                                   deterministic=data.draw(st.booleans()))

    def state_request(self, data) -> pb.SetSessionStateRequest:
        sid = self.session_id(data)
        g = self.like(sid)
        specs = list(g.state_shapes.values()) if g else [(2, 8), (1, 16)]
        count = data.draw(st.sampled_from([len(specs)] * 3 + [0, 1, 2, 3]), label="tensors")
        tensors = []
        for k in range(count):
            layers, hidden = specs[min(k, len(specs) - 1)]
            shape = data.draw(st.one_of(
                *[st.just([layers, hidden])] * 4, st.just([hidden, layers]),
                st.just([layers, 1, hidden]), st.just([layers * hidden]),
                st.lists(st.integers(-2**63, 2**63 - 1), max_size=4),
                st.builds(lambda k: list(range(k)), st.integers(100, 3000))), label="shape")
            values = self.floats_for(data, layers * hidden, g is not None)
            tensors.append(pb.Tensor(shape=shape, data=values))
        return pb.SetSessionStateRequest(session_id=sid, state=tensors)

    def model_name(self, data) -> str:
        return data.draw(st.one_of(st.sampled_from(sorted(self.infos)), st.text(max_size=12), st.just(""), HUGE_TEXT,
                                   st.sampled_from(sorted(self.infos)).map(str.upper)), label="model")

    def request(self, data, method: str):
        """A well-formed request message for ``method`` with hostile field values."""
        if method == "ListModels":
            return pb.ListModelsRequest()
        if method == "CreateSession":
            seed = data.draw(st.none() | UINT64, label="seed")
            return pb.CreateSessionRequest(model=self.model_name(data), **({} if seed is None else {"seed": seed}))
        if method in ("Step", "StepStream"):
            return self.step_request(data)
        if method == "StepBatch":
            return self.batch_request(data)
        if method in ("ResetSession", "GetSessionState"):
            return REQUEST[method](session_id=self.session_id(data))
        if method == "CloseSession":  # a good session closed starts over: not too often
            return REQUEST[method](session_id=self.session_id(data, good=data.draw(st.integers(0, 4)) == 0))
        if method == "SetSessionState":
            return self.state_request(data)
        return self.message(data, METHODS[method].input_type)

    def message(self, data, descriptor, depth: int = 0):
        """Any message of ``descriptor`` with random field values (session ids, versions and model names where named so)."""
        msg = message_factory.GetMessageClass(descriptor)()
        for f in descriptor.fields:
            if not data.draw(st.booleans()):
                continue
            values = [self._field_value(data, f, depth) for _ in range(data.draw(st.integers(1, 3)) if f.is_repeated else 1)]
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                for v in values:
                    (getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)).CopyFrom(v)
            elif f.is_repeated:
                getattr(msg, f.name).extend(values)
            else:
                setattr(msg, f.name, values[0])
        return msg

    def _field_value(self, data, f, depth: int):
        t = FieldDescriptor
        if f.type == t.TYPE_MESSAGE:
            return self.message(data, f.message_type, depth + 1) if depth < 2 else \
                message_factory.GetMessageClass(f.message_type)()
        if f.type == t.TYPE_STRING:
            if "session" in f.name:
                return self.session_id(data)
            if "version" in f.name:
                return data.draw(st.sampled_from([i.version for i in self.infos.values()]) | st.text(max_size=16))
            if "model" in f.name or f.name == "name":
                return self.model_name(data)
            return data.draw(st.text(max_size=16))
        strategy = {
            t.TYPE_BOOL: st.booleans(), t.TYPE_FLOAT: ANY_FLOAT, t.TYPE_DOUBLE: st.floats(), t.TYPE_BYTES: st.binary(max_size=16),
            t.TYPE_INT32: st.integers(-2**31, 2**31 - 1), t.TYPE_SINT32: st.integers(-2**31, 2**31 - 1),
            t.TYPE_SFIXED32: st.integers(-2**31, 2**31 - 1), t.TYPE_UINT32: st.integers(0, 2**32 - 1),
            t.TYPE_FIXED32: st.integers(0, 2**32 - 1), t.TYPE_INT64: st.integers(-2**63, 2**63 - 1),
            t.TYPE_SINT64: st.integers(-2**63, 2**63 - 1), t.TYPE_SFIXED64: st.integers(-2**63, 2**63 - 1),
            t.TYPE_UINT64: UINT64, t.TYPE_FIXED64: UINT64,
        }.get(f.type)
        if f.type == t.TYPE_ENUM:
            strategy = st.sampled_from([v.number for v in f.enum_type.values])
        assert strategy is not None, f"no strategy for field {f.full_name} of type {f.type}"
        return data.draw(strategy)

    def payload(self, data, method: str) -> bytes:
        """Bytes for ``method``: random, a mutated request, or a message of another type."""
        kind = data.draw(st.sampled_from(["random", "mutated", "mutated", "other type"]), label="payload")
        if kind == "random":
            return data.draw(st.binary(max_size=80))
        if kind == "other type":
            return self.message(data, data.draw(st.sampled_from(ALL_TYPES)).DESCRIPTOR).SerializeToString()
        return mutate(data, self.request(data, method).SerializeToString())

    # ---------------------------------------------------------------------------- calls and the oracle

    def unary(self, method: str, payload: bytes) -> None:
        """Send ``payload`` as-is to a unary ``method`` and check the answer and its effect on the good sessions."""
        self.touch(payload)
        try:
            body, code, details = self.calls[method](payload, timeout=30), SC.OK, ""
        except grpc.RpcError as exc:
            body, code, details = None, exc.code(), exc.details() or ""
        where = f"{method}({payload[:120]!r}{'...' if len(payload) > 120 else ''}, {len(payload)} bytes)"
        SEEN[method, code.name] += 1
        if len(payload) > MAX_MESSAGE:
            assert code == SC.RESOURCE_EXHAUSTED and TOO_LARGE in details, f"{where}: {code} {details!r}"
            return
        request = parse(REQUEST[method], payload)
        if request is None:
            assert code == SC.INVALID_ARGUMENT and details.startswith(UNPARSABLE), \
                f"{where}: unparsable, answered {code} {details!r}"
            check_message(details, where)
            return
        assert code in ANSWERS, f"{where}: {code} {details!r}"
        if code != SC.OK:
            check_message(details, where)
        if code == SC.RESOURCE_EXHAUSTED:
            assert method == "CreateSession", f"{where}: RESOURCE_EXHAUSTED {details!r}"
        response = RESPONSE[method].FromString(body) if code == SC.OK else None
        where = f"{method} {brief(request)}"
        judge = getattr(self, "_judge_" + method, None)
        if judge is not None:
            judge(request, code, response, where)

    def stream(self, payloads: list[bytes]) -> None:
        """Send ``payloads`` over one StepStream: one answer each, in order, errors in-band."""
        for p in payloads:
            self.touch(p)
        answers, code, details = [], SC.OK, ""
        try:
            for body in self.calls["StepStream"](iter(payloads), timeout=60):
                answers.append(pb.StepResponse.FromString(body))
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        SEEN["StepStream", code.name] += 1
        where = f"StepStream of {len(payloads)} messages"
        requests = [parse(pb.StepRequest, p) for p in payloads]  # None: too large or unparsable
        n = len(answers)
        assert n <= len(payloads), f"{where}: {n} answers"
        for k, (request, answer) in enumerate(zip(requests, answers)):
            assert len(payloads[k]) <= MAX_MESSAGE, f"{where}: #{k} is too large, yet answered {answer}"
            at = f"{where}, #{k} {brief(request) if request is not None else payloads[k][:60]}"
            status = SC.OK
            if answer.HasField("error"):
                status = CODE.get(answer.error.code)
                assert status in ANSWERS and status not in (SC.OK, SC.RESOURCE_EXHAUSTED), \
                    f"{at}: in-band code {answer.error.code}"
                check_message(answer.error.message, at)
            SEEN["StepStream/in-band", status.name] += 1
            if request is None:  # the server parses requests itself: it may refuse one in-band and carry on
                assert status == SC.INVALID_ARGUMENT, f"{at}: unparsable, answered {status}"
                continue
            assert (answer.session_id, answer.seq) == (echoed(request.session_id), request.seq), f"{at}: answered {answer}"
            self._judge_Step(request, status, None if status != SC.OK else answer, at)
        if n == len(payloads):
            assert code == SC.OK, f"{where}: all answered, then {code} {details!r}"
            return
        too_large = next((i for i, p in enumerate(payloads) if len(p) > MAX_MESSAGE), None)
        if code == SC.RESOURCE_EXHAUSTED and too_large is not None and TOO_LARGE in details:
            # The transport refuses the large message as it arrives and cuts the stream, maybe before
            # the server answered (or even ran) the steps before it: look those up.
            assert n <= too_large, f"{where}: {n} answers, #{too_large} too large"
            for request in requests[n:too_large]:
                if request is None:
                    break
                self._reconcile(request, where)
            return
        at = f"{where}, ended after {n} answers at #{n} {payloads[n][:60]!r}"
        raise AssertionError(f"{at}: {code} {details!r}: only a message over the size limit may end a stream")

    def _reconcile(self, request: pb.StepRequest, where: str) -> None:
        """A step whose answer never came: if the server ran it, the twin takes it too (unseen)."""
        g = self.good_of(request.session_id)
        obs = np.asarray(request.obs, np.float32)
        if g is not None and request.seq == g.seq + 1 and \
                g.expect(request.seq, obs.size == g.dim and bool(np.isfinite(obs).all())) == {SC.OK}:
            state = self.stub.GetSessionState(pb.GetSessionStateRequest(session_id=g.sid), timeout=30)
            if state.seq == request.seq:
                g.stepped(request.seq, obs, request.episode_start, request.deterministic, None, where)

    def _judge_ListModels(self, request, code, response, where) -> None:
        assert code == SC.OK, where
        assert {m.name for m in response.models} >= set(self.infos), f"{where}: {[m.name for m in response.models]}"

    def _judge_CreateSession(self, request, code, response, where) -> None:
        if request.model not in self.infos:
            assert code in (SC.NOT_FOUND, SC.INVALID_ARGUMENT), f"{where}: unknown model answered {code}"
            return
        assert code == SC.OK, f"{where}: {code} with {len(self.server.directory)} sessions open (a leak?)"
        assert response.model.name == request.model and response.session_id, where
        self.scratch.append(response.session_id)
        self.scratch_dim[response.session_id] = int(response.model.obs_shape[0])
        while len(self.scratch) > MAX_SCRATCH:
            old = self.scratch.popleft()
            self.stub.CloseSession(pb.CloseSessionRequest(session_id=old), timeout=30)
            self.gone.append(old)

    def _judge_session_call(self, request, code, where) -> Good | None:
        """Common to calls naming one session: unknown ids are refused; returns the good session named, if any."""
        g = self.good_of(request.session_id)
        if g is None and request.session_id not in self.scratch:
            assert code in NO_SUCH_SESSION | {SC.INVALID_ARGUMENT}, f"{where}: not an open session, answered {code}"
        return g

    def _judge_Step(self, request, code, response, where) -> None:
        g = self._judge_session_call(request, code, where)
        if response is not None:
            assert (response.session_id, response.seq) == (request.session_id, request.seq), f"{where}: {response}"
        if g is None:
            return
        obs = np.asarray(request.obs, np.float32)
        obs_ok = obs.size == g.dim and bool(np.isfinite(obs).all())
        assert code in g.expect(request.seq, obs_ok), f"{where}: answered {code}, expected {g.expect(request.seq, obs_ok)}"
        if code == SC.OK:
            assert response.model_version == g.info.version, where
            g.stepped(request.seq, obs, request.episode_start, request.deterministic, g.from_step(response), where)

    def _judge_StepBatch(self, request, code, response, where) -> None:
        ids, n = list(request.session_ids), len(request.session_ids)
        if code != SC.OK:
            return  # refused whole: nothing may have changed (the good sessions are checked after each example)
        assert list(response.seqs) == (list(request.seqs) if n else []), f"{where}: seqs {list(response.seqs)}"
        errors = {}
        for e in response.errors:
            assert 0 <= e.index < n and e.index not in errors, f"{where}: error row {e.index}"
            assert e.session_id == echoed(ids[e.index]), f"{where}: error row {e.index} names {e.session_id[:40]!r}"
            status = CODE.get(e.code)
            assert status in ANSWERS and status not in (SC.OK, SC.RESOURCE_EXHAUSTED), f"{where}: row code {e.code}"
            check_message(e.message, f"{where}, row {e.index}")
            SEEN["StepBatch/row", status.name] += 1
            errors[e.index] = status
        model = next((g for g in self.good if g.info.version == response.model_version), None)
        dim = model.dim if model else 0
        if model is not None:
            assert len(request.obs) == n * dim, f"{where}: OK for {len(request.obs)} obs values, {n} x {dim} expected"
        for i, sid in enumerate(ids):
            g = self.good_of(sid)
            if g is None:
                if sid not in self.scratch:
                    assert errors.get(i) in NO_SUCH_SESSION | {SC.INVALID_ARGUMENT}, \
                        f"{where}: row {i} (not an open session) answered {errors.get(i)}"
                continue
            at = f"{where}, row {i} ({g.name})"
            assert model is not None, f"{at}: a batch with an open session answered no model_version"
            if g is not model:
                assert errors.get(i) == SC.INVALID_ARGUMENT, f"{at}: on another model than {model.name}, {errors.get(i)}"
                continue
            obs = np.asarray(request.obs[i * dim:(i + 1) * dim], np.float32)
            status = errors.get(i, SC.OK)
            allowed = g.expect(request.seqs[i], bool(np.isfinite(obs).all()))
            assert status in allowed, f"{at}: answered {status}, expected {allowed}"
            if status == SC.OK:
                start = bool(request.episode_start[i]) if len(request.episode_start) else False
                g.stepped(request.seqs[i], obs, start, request.deterministic, g.from_batch(response, i), at)

    def _judge_ResetSession(self, request, code, response, where) -> None:
        g = self._judge_session_call(request, code, where)
        if g is not None:
            assert code == SC.OK, f"{where}: {code}"
            g.reset()

    def _judge_CloseSession(self, request, code, response, where) -> None:
        g = self._judge_session_call(request, code, where)
        if code != SC.OK:
            assert g is None and request.session_id not in self.scratch, f"{where}: closing an open session: {code}"
            return
        self.gone.append(request.session_id)
        if g is not None:
            g.open(self.stub)  # closing is a valid request: the good session starts over under a new id
            SEEN["good session", "closed (and reopened)"] += 1
        else:
            self.scratch.remove(request.session_id)

    def _judge_GetSessionState(self, request, code, response, where) -> None:
        g = self._judge_session_call(request, code, where)
        if g is not None:
            assert code == SC.OK, f"{where}: {code}"
            g.check_state(response, where)

    def _judge_MigrateSession(self, request, code, response, where) -> None:
        g = self._judge_session_call(request, code, where)
        if g is None:
            return
        if request.version in ("", g.info.version):  # one version loaded: a migration to itself, changing nothing
            assert code == SC.OK, f"{where}: {code}"
            assert (response.model.name, response.model.version) == (g.name, g.info.version), f"{where}: {response.model}"
        else:
            assert code in (SC.FAILED_PRECONDITION, SC.INVALID_ARGUMENT, SC.NOT_FOUND), f"{where}: {code}"

    def _judge_SetSessionState(self, request, code, response, where) -> None:
        g = self._judge_session_call(request, code, where)
        if g is None:
            return
        if g.valid_state(request.state):
            assert code == SC.OK, f"{where}: valid state refused with {code}"
            g.set_state(request.state)
        else:
            assert code == SC.INVALID_ARGUMENT, f"{where}: invalid state answered {code}"

    # ---------------------------------------------------------------------------- invariants

    def touch(self, payload: bytes) -> None:
        self.touched.update(g.sid for g in self.good if g.sid.encode() in payload)

    def verify(self, where: str, all_: bool = True) -> None:
        """Each good session's state and seq (all, or those named since the last verify) are its twin's;
        the server logged no unexpected exception."""
        assert not self.errors.records, f"{where}: the server logged {len(self.errors.records)} errors; " \
                                        f"first:\n{self.errors.records[0]}"
        for g in self.good:
            if all_ or g.sid in self.touched:
                g.check_state(self.stub.GetSessionState(pb.GetSessionStateRequest(session_id=g.sid), timeout=30), where)
        self.touched.clear()

    def advance(self, where: str) -> None:
        """Step each good session once more with a valid request: it still answers as its twin."""
        for g in self.good:
            obs = np.float32([self.rng.uniform(-2, 2) for _ in range(g.dim)])
            start, seq = self.rng.random() < 0.1, g.seq + 1
            r = self.stub.Step(pb.StepRequest(session_id=g.sid, seq=seq, obs=obs, episode_start=start,
                                              deterministic=True), timeout=30)
            g.stepped(seq, obs, start, True, g.from_step(r), f"{where}: good step of {g.name}")

    def settle(self, where: str) -> None:
        self.verify(where)
        self.advance(where)
        self.verify(where)


def mutate(data, payload: bytes) -> bytes:
    """``payload`` with bytes flipped, cut, inserted or doubled (every draw made whatever the payload's length:
    see World.session_id)."""
    b = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete", "double", "byte"]))
        at = data.draw(st.integers(0, 2**16)) % (len(b) + 1)
        value = data.draw({"flip": st.integers(0, 7), "byte": st.integers(0, 255), "insert": st.binary(min_size=1, max_size=8),
                           "delete": st.integers(1, 8)}.get(op, st.just(None)))
        if op == "flip" and b:
            b[min(at, len(b) - 1)] ^= 1 << value
        elif op == "byte" and b:
            b[min(at, len(b) - 1)] = value
        elif op == "cut":
            del b[at:]
        elif op == "insert":
            b[at:at] = value
        elif op == "delete":
            del b[at:at + value]
        elif op == "double":  # two messages back to back parse as one: repeated fields doubled, the last scalar wins
            b += bytes(b)
    return bytes(b)


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(serve_export_dirs):
    config = ServeConfig(max_sessions=200, session_ttl=0, max_message_bytes=MAX_MESSAGE, max_batch_rows=MAX_ROWS,
                         max_concurrent_rpcs=512)
    server, port = create_server(serve_export_dirs, "127.0.0.1:0", config)
    w = World(server, port, serve_export_dirs)
    try:
        w.settle("start")
        yield w
    finally:
        w.close()
        stops(server, 5.0)  # the last test asserts that it stops; here only never hang the suite


# ------------------------------------------------------------------------------------------- fuzz


def test_well_formed_requests_with_hostile_values(world):
    @fuzz(max_examples=80)
    def run(data):
        for _ in range(data.draw(st.integers(1, 4), label="calls")):
            method = data.draw(st.sampled_from(sorted(METHODS)), label="method")
            if METHODS[method].client_streaming:
                world.stream([world.request(data, method).SerializeToString()
                              for _ in range(data.draw(st.integers(0, 4)))])
            else:
                world.unary(method, world.request(data, method).SerializeToString())
        world.verify("after the example", all_=False)

    run()
    world.settle("end")


def test_step_batches(world):
    @fuzz(max_examples=80)
    def run(data):
        world.unary("StepBatch", world.batch_request(data).SerializeToString())
        world.verify("after the batch", all_=False)

    run()
    world.settle("end")


def test_step_streams_mixing_good_and_bad_messages(world):
    @fuzz(max_examples=40)
    def run(data):
        payloads = []
        for _ in range(data.draw(st.integers(1, 6), label="messages")):
            kind = data.draw(st.sampled_from(["step"] * 12 + ["mutated"] * 3 + ["random", "other type"] * 2
                                             + ["too large"]))  # rare: grpcio takes ~0.2 s to refuse one
            if kind == "step":
                payloads.append(world.step_request(data).SerializeToString())
            elif kind == "too large":
                payloads.append(pad_to(world.step_request(data).SerializeToString(), MAX_MESSAGE + 1))
            else:
                payloads.append(world.payload(data, "StepStream"))
        world.stream(payloads)
        world.verify("after the stream", all_=False)

    run()
    world.settle("end")


def test_random_mutated_and_wrongly_typed_bytes_to_every_method(world):
    @fuzz(max_examples=150)
    def run(data):
        method = data.draw(st.sampled_from(sorted(METHODS)), label="method")
        payload = world.payload(data, method)
        if METHODS[method].client_streaming:
            world.stream([payload])
        else:
            world.unary(method, payload)
        world.verify("after the call", all_=False)

    run()
    world.settle("end")


def test_messages_around_the_size_limit(world):
    @fuzz(max_examples=20)
    def run(data):
        method = data.draw(st.sampled_from(sorted(METHODS)), label="method")
        size = data.draw(st.sampled_from([MAX_MESSAGE - 1, MAX_MESSAGE, MAX_MESSAGE + 1, 4 * MAX_MESSAGE])
                         | st.integers(1, MAX_MESSAGE), label="size")
        payload = pad_to(world.request(data, method).SerializeToString(), size)
        if METHODS[method].client_streaming:
            world.stream([payload])
        else:
            world.unary(method, payload)
        world.verify("after the call", all_=False)

    run()
    world.settle("end")


# ------------------------------------------------------------------------------------------- known cases


def _refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_status_messages_stay_short_whatever_the_input(world):
    """Messages name the bad value, but a huge one cut short: else the status itself is lost in transit."""
    stub, g = world.stub, world.good[0]
    huge = "\u00e9" * 12_000  # 24 KB UTF-8, 72 KB percent-encoded
    cases = {
        "Step, unknown session": (lambda: stub.Step(pb.StepRequest(session_id=huge, seq=1, obs=[0.0] * 3)), SC.NOT_FOUND),
        "CreateSession, unknown model": (lambda: stub.CreateSession(pb.CreateSessionRequest(model=huge)), SC.NOT_FOUND),
        "StepBatch, duplicate session": (lambda: stub.StepBatch(pb.StepBatchRequest(
            session_ids=[huge, huge], seqs=[1, 1])), SC.INVALID_ARGUMENT),
        "SetSessionState, huge shape": (lambda: stub.SetSessionState(pb.SetSessionStateRequest(
            session_id=g.sid, state=[pb.Tensor(shape=list(range(4000)))] * len(g.state))), SC.INVALID_ARGUMENT),
    }
    if "MigrateSession" in METHODS:
        cases["MigrateSession, unknown version"] = (lambda: stub.MigrateSession(pb.MigrateSessionRequest(
            session_id=g.sid, version=huge)), SC.FAILED_PRECONDITION)
    problems = []
    for what, (call, expected) in cases.items():
        code, details = _refusal(call)
        try:
            assert code == expected, f"{what}: {code} {details[:200]!r}"
            check_message(details, what)
        except AssertionError as exc:
            problems.append(str(exc))
    world.settle("after the huge values")
    assert not problems, "\n".join(problems)


def test_echoed_ids_never_push_an_answer_past_the_send_limit(serve_export_dirs):
    """An answer repeats the session id it refuses: a 3 MB id under the default 4 MiB limits still gets its answer."""
    server, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(max_sessions=4))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            sid = stub.CreateSession(pb.CreateSessionRequest(model="q_lstm")).session_id
            huge = "z" * 3_000_000
            answers = list(stub.StepStream(iter([pb.StepRequest(session_id=huge, seq=1, obs=[0.0] * 5),
                                                 pb.StepRequest(session_id=sid, seq=1, obs=[0.0] * 5)]), timeout=30))
            assert [a.error.code for a in answers] == [SC.NOT_FOUND.value[0], 0]
            check_message(answers[0].error.message, "StepStream, 3 MB unknown id")
            batch = stub.StepBatch(pb.StepBatchRequest(session_ids=[f"{i}" + "z" * 60_000 for i in range(60)] + [sid],
                                                       seqs=[1] * 60 + [2], obs=[0.0] * 61 * 5), timeout=30)
            assert [(e.index, e.code) for e in batch.errors] == [(i, SC.NOT_FOUND.value[0]) for i in range(60)]
            for e in batch.errors:
                check_message(e.message, f"StepBatch row {e.index}")
    finally:
        stops(server, 5.0)


def test_the_server_stops_after_streams_with_unparsable_messages(serve_export_dirs):
    """A StepStream message that does not parse is answered in-band and the stream carries on; it must not
    leave a call behind that keeps the server from stopping (and saving its sessions)."""
    server, port = create_server({"q_lstm": serve_export_dirs["q_lstm"]}, "127.0.0.1:0", ServeConfig(max_sessions=4))
    stopped = False
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            step_stream = channel.stream_stream(f"/{SERVICE.full_name}/StepStream", request_serializer=None,
                                                response_deserializer=None)
            follow = pb.StepRequest(session_id="x", seq=1, obs=[0.0] * 5).SerializeToString()
            for _ in range(20):
                bad, after = [pb.StepResponse.FromString(b) for b in step_stream(iter([b"\xff\xff", follow]), timeout=30)]
                assert bad.error.code == SC.INVALID_ARGUMENT.value[0] and bad.error.message.startswith(UNPARSABLE)
                assert after.error.code == SC.NOT_FOUND.value[0] and after.session_id == "x"
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models] == ["q_lstm"]
        stopped = stops(server, 5.0)
        assert stopped, "server.stop(None) hangs after StepStreams whose first message did not parse"
    finally:
        if not stopped:
            stops(server, 0.1)


def test_the_server_still_serves_after_the_fuzz(world):
    print("\nstatuses seen:", ", ".join(f"{m} {c}: {k}" for (m, c), k in sorted(SEEN.items())))
    world.settle("end of the fuzz")
    with grpc.insecure_channel(f"127.0.0.1:{world.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE.full_name):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == \
                health_pb2.HealthCheckResponse.SERVING
    assert {m.name for m in world.stub.ListModels(pb.ListModelsRequest(), timeout=30).models} >= set(world.infos)
    open_now, held = len(world.server.directory), len(world.good) + len(world.scratch)
    assert open_now == held, f"{open_now} sessions open, the fuzz holds {held} (at most {len(world.good) + MAX_SCRATCH})"
    assert stops(world.server, 10.0), "server.stop(None) did not return within 10 s after the fuzz"
