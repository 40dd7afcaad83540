"""The client protocol without I/O, shared by the sync and asyncio clients.

A *plan* is a generator that decides what to send and what to make of each answer: it yields
:class:`Call` (send this request; the driver sends back the response, or the :class:`PolicyError` it
failed with) and :class:`Backoff` (wait before the next call), and returns the result. The transports (``_client.py`` with grpc's sync API, ``_aio.py`` with ``grpc.aio``) only
perform these commands, so seq numbering, retries with the same seq, the replay after a server
restored from an older checkpoint, and session creation and management are written once, here.

    plan = session.step_plan(session.step_request(obs, episode_start=True))
    command = plan.send(None)            # Call("Step", StepRequest(seq=1, ...))
    command = plan.send(UNAVAILABLE)     # Backoff(0.05): wait
    command = plan.send(None)            # Call("Step", the same request, seq=1)
    plan.send(response)                  # StopIteration(value=response): applied, seq is now 1
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generator, TypeVar

import grpc
import numpy as np

from rnnpolicy.clients._convert import (
    ModelInfo,
    StepResult,
    model_info,
    obs_encoder,
    result_decoder,
    state_message,
    state_tensors,
    step_request,
)
from rnnpolicy.clients._errors import RETRYABLE, PolicyError
from rnnpolicy.v1 import policy_pb2 as pb

__all__ = ["AFFINITY_METADATA", "DEFAULT_HISTORY", "SESSION_ID_METADATA", "TRANSPORTS", "Backoff", "Call", "Plan", "RetryPolicy",
           "SessionProtocol", "affinity_metadata", "call_plan", "check_history", "check_transport", "create_plan", "list_models_plan",
           "settle_plan", "step_timed_out"]

T = TypeVar("T")

DEFAULT_HISTORY = 512
"""Steps a session keeps to replay to a server restored from an older checkpoint; keep it at least the
server's ``--checkpoint-interval`` times the step rate."""

SESSION_ID_METADATA = "x-session-id"
"""The gRPC metadata key every per-session call carries (the session id), so a proxy can route on it."""
AFFINITY_METADATA = "x-session-affinity"
"""The gRPC metadata key carrying a session's affinity key (``CreateSession.affinity``) on its creation and every
later call, so a proxy routes the sessions of one affinity (one game server's bots) together (docs/cluster.md)."""

TRANSPORTS = ("stream", "unary")
"""How a session's steps travel: over a ``StepStream`` of its own (the default), or as unary ``Step`` calls."""

CLOSE_IGNORED = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
"""Codes a ``CloseSession`` ignores: the session is gone already, or so is the server."""


@dataclass(frozen=True)
class Call:
    """Send ``request`` as ``method`` (a PolicyService RPC name); answer with its response or its PolicyError."""

    method: str
    request: Any


@dataclass(frozen=True)
class Backoff:
    """Wait ``seconds`` before the next call. (A stream transport dropped the broken stream when the call failed;
    the next call opens a fresh one.)"""

    seconds: float


Plan = Generator["Call | Backoff", Any, T]


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures (``RETRYABLE`` codes) are retried ``retries`` times, waiting ``backoff * 2**attempt`` s."""

    retries: int = 3
    backoff: float = 0.05

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {self.backoff}")


def check_history(history: int) -> None:
    """``ValueError`` unless ``history`` (steps a session keeps for replay) is >= 0."""
    if history < 0:
        raise ValueError(f"history must be >= 0 steps, got {history}")


def check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(map(repr, TRANSPORTS))}, got {transport!r}")


def call_plan(method: str, request: Any, retry: RetryPolicy | None = None) -> Plan[Any]:
    """One call; with ``retry``, resent unchanged after a transient failure (a step keeps its seq).

    A ``StepResponse`` carrying an in-band error (``StepStream``) counts as that error; one answering
    another seq than the request's is a broken protocol (``INTERNAL``, never retried)."""
    return (yield from settle_plan(method, request, (yield Call(method, request)), retry))


def settle_plan(method: str, request: Any, outcome: Any, retry: RetryPolicy | None) -> Plan[Any]:
    """:func:`call_plan` from the outcome of its first attempt on."""
    retry = retry or RetryPolicy(retries=0)
    attempt = 0
    while True:
        if type(outcome) is pb.StepResponse:
            if outcome.HasField("error"):
                error = outcome.error
                outcome = PolicyError.from_code_number(error.code, error.message, error.expected_seq)
            elif outcome.seq != request.seq:
                raise PolicyError(grpc.StatusCode.INTERNAL,
                                  f"session {request.session_id!r}: the server answered seq {outcome.seq} "
                                  f"to step seq {request.seq}")
        if not isinstance(outcome, PolicyError):
            return outcome
        if attempt == retry.retries or outcome.code not in RETRYABLE:
            raise outcome
        yield Backoff(retry.backoff * 2 ** attempt)
        attempt += 1
        outcome = yield Call(method, request)


def _answers(request: pb.StepRequest, outcome: Any) -> bool:
    """Whether ``outcome`` is the successful answer to the step ``request``."""
    return type(outcome) is pb.StepResponse and outcome.seq == request.seq and not outcome.HasField("error")


def step_timed_out(request: pb.StepRequest, timeout: float) -> PolicyError:
    """The error of a step over a stream that got no answer within ``timeout`` seconds."""
    return PolicyError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer to step seq {request.seq} within {timeout} s")


def list_models_plan(retry: RetryPolicy) -> Plan[list[ModelInfo]]:
    response = yield from call_plan("ListModels", pb.ListModelsRequest(), retry)
    return [model_info(m) for m in response.models]


def create_plan(model: str, seed: int | None, affinity: str = "") -> Plan[pb.CreateSessionResponse]:
    """``CreateSession``, never retried: a lost answer would leave a second session open on the server."""
    request = pb.CreateSessionRequest(model=model, affinity=affinity)
    if seed is not None:
        request.seed = seed
    return (yield from call_plan("CreateSession", request))


def affinity_metadata(affinity: str) -> tuple[tuple[str, str], ...]:
    """The metadata that routes a session's calls by its affinity key (none without one)."""
    return ((AFFINITY_METADATA, affinity),) if affinity else ()


class SessionProtocol:
    """One server-side session's client half: seq numbering, the step history, and a plan per call.

    ``seq`` is the last seq the server applied; a step sends ``seq + 1``, and after a transient failure
    the same request again (the server answers a repeated seq from its cache, at most once). When the
    server answers ``FAILED_PRECONDITION`` expecting a seq at or before ours (it was restored from an
    older checkpoint), the steps from its expected seq on are replayed from the history, then the step."""

    def __init__(self, created: pb.CreateSessionResponse, *, deterministic: bool = True,
                 history: int = DEFAULT_HISTORY, retry: RetryPolicy | None = None, affinity: str = "") -> None:
        check_history(history)
        self.session_id: str = created.session_id
        self.model: ModelInfo = model_info(created.model)
        self.deterministic = deterministic
        self.retry = retry or RetryPolicy()
        self.seq = 0
        """The last seq the server applied."""
        self.history: deque[pb.StepRequest] = deque(maxlen=history)
        """The last ``history`` steps applied, oldest first, one per seq."""
        self.metadata: tuple[tuple[str, str], ...] = ((SESSION_ID_METADATA, self.session_id),
                                                      *affinity_metadata(affinity))
        self.closed = False
        self._encode = obs_encoder(self.model.spec)
        self._decode = result_decoder(self.model.spec)

    # ---------------------------------------------------------------- steps

    def step_request(self, obs: Any, episode_start: bool = False, deterministic: bool | None = None) -> pb.StepRequest:
        """The step after the last applied one: ``seq + 1``, the observation encoded by the model's spec."""
        det = self.deterministic if deterministic is None else deterministic
        return step_request(self.session_id, self.seq + 1, self._encode(obs), episode_start, det)

    def step_plan(self, request: pb.StepRequest) -> Plan[pb.StepResponse]:
        """Send ``request`` (retried with its seq), replaying lost steps first if the server asks for them."""
        response = yield Call("Step", request)
        if not _answers(request, response):  # the common case skips the nested plans
            try:
                response = yield from settle_plan("Step", request, response, self.retry)
            except PolicyError as error:
                replay = self.replay_plan(error)
                if replay is None:
                    raise
                for old in replay:
                    yield from call_plan("Step", old, self.retry)
                response = yield from call_plan("Step", request, self.retry)
        self.applied(request, response)
        return response

    def step_result(self, response: pb.StepResponse) -> StepResult:
        """What a step answers the caller."""
        return self._decode(response)

    def replay_plan(self, error: PolicyError) -> list[pb.StepRequest] | None:
        """The steps to resend when ``error`` says the server is behind this client (it was restored from a
        checkpoint older than our last step): every step from its expected seq on. None: not that error.
        A ``PolicyError`` when the history no longer holds them (then :meth:`resync` and start a new episode)."""
        expected = error.expected_seq
        if error.code != grpc.StatusCode.FAILED_PRECONDITION or not 0 < expected <= self.seq:
            return None
        replay = [r for r in self.history if r.seq >= expected]
        if not replay or replay[0].seq != expected:
            held = f"seqs {self.history[0].seq}..{self.history[-1].seq}" if self.history else "no steps"
            raise PolicyError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"session {self.session_id!r}: the server expects seq {expected} but this client is at "
                              f"seq {self.seq} and its history holds {held}, so the lost steps cannot be replayed; "
                              f"call resync() and start a new episode (episode_start=True)", expected_seq=expected)
        return replay

    def applied(self, request: pb.StepRequest, response: pb.StepResponse) -> None:
        """The server applied ``request`` (or answered its repeat from the cache): move on, remember it."""
        self.seq = response.seq
        history = self.history
        if history.maxlen:
            while history and history[-1].seq >= request.seq:  # a repeated seq replaces the step it repeats
                history.pop()
            history.append(request)

    def resync(self, expected_seq: int) -> None:
        """Continue from the server's ``expected_seq`` after steps were lost beyond replay; the server's state is
        older than this client's episode, so the next step should start a new one (``episode_start=True``)."""
        if expected_seq < 1:
            raise ValueError(f"expected_seq must be >= 1, got {expected_seq}")
        self.seq = expected_seq - 1
        self.history.clear()

    # ---------------------------------------------------------------- session calls

    def reset_plan(self) -> Plan[None]:
        yield from call_plan("ResetSession", pb.ResetSessionRequest(session_id=self.session_id), self.retry)

    def get_state_plan(self) -> Plan[dict[str, np.ndarray]]:
        request = pb.GetSessionStateRequest(session_id=self.session_id)
        return state_tensors((yield from call_plan("GetSessionState", request, self.retry)))

    def set_state_plan(self, state: dict[str, np.ndarray]) -> Plan[None]:
        request = state_message(self.model.spec, self.session_id, state)  # a bad state fails before any call
        yield from call_plan("SetSessionState", request, self.retry)

    def migrate_plan(self, version: str = "") -> Plan[ModelInfo]:
        """Move to another loaded ``version`` of the model (empty: the latest); the session's model becomes it."""
        request = pb.MigrateSessionRequest(session_id=self.session_id, version=version)
        self.model = model_info((yield from call_plan("MigrateSession", request, self.retry)).model)
        self._encode = obs_encoder(self.model.spec)  # the same shapes (the server refuses others), but its own spec
        self._decode = result_decoder(self.model.spec)
        return self.model

    def close_plan(self) -> Plan[None]:
        """``CloseSession`` once; a session or server already gone (``CLOSE_IGNORED``) is not an error."""
        if self.closed:
            return
        self.closed = True
        try:
            yield from call_plan("CloseSession", pb.CloseSessionRequest(session_id=self.session_id))
        except PolicyError as exc:
            if exc.code not in CLOSE_IGNORED:
                raise
