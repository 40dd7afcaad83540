"""The client protocol core without a server: seq numbering, retries with the same seq, the replay plan,
the history limit, in-band errors, session calls, and the sync and asyncio drivers that run its plans."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from rnnpolicy.clients._aio import drive_async
from rnnpolicy.clients._client import drive
from rnnpolicy.clients._errors import PolicyError
from rnnpolicy.clients._protocol import (
    SESSION_ID_METADATA,
    Backoff,
    Call,
    RetryPolicy,
    SessionProtocol,
    call_plan,
    check_transport,
    create_plan,
)
from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.spec import ActionSpec, PolicySpec
from rnnpolicy.v1 import policy_pb2 as pb

SPEC = PolicySpec(kind="q", cell="lstm", num_layers=1, hidden_size=4, obs_encoding=ObsEncoding.flat(3),
                  action=ActionSpec("discrete", n=2))
UNAVAILABLE = PolicyError(grpc.StatusCode.UNAVAILABLE, "connection reset")


def created(session_id: str = "s1") -> pb.CreateSessionResponse:
    return pb.CreateSessionResponse(session_id=session_id, model=pb.ModelInfo(name="q", version="v1",
                                                                              spec_json=SPEC.to_json()))


def protocol(history: int = 16, retries: int = 2) -> SessionProtocol:
    return SessionProtocol(created(), history=history, retry=RetryPolicy(retries=retries, backoff=0.01))


def answer(request: pb.StepRequest) -> pb.StepResponse:
    return pb.StepResponse(session_id=request.session_id, seq=request.seq, discrete_action=1, model_version="v1")


class Server:
    """Answers a plan's calls from a script: per call, an error to raise or None (answer the step)."""

    def __init__(self, *script: PolicyError | None) -> None:
        self.script = list(script)
        self.calls: list[Call] = []
        self.pauses: list[float] = []

    def perform(self, call: Call):
        self.calls.append(call)
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error
        return answer(call.request) if call.method == "Step" else None

    def run(self, plan):
        return drive(plan, self.perform, self.pauses.append)

    @property
    def seqs(self) -> list[int]:
        return [c.request.seq for c in self.calls]


def steps(session: SessionProtocol, server: Server, n: int) -> None:
    for t in range(n):
        server.run(session.step_plan(session.step_request([0.1, 0.2, 0.3], episode_start=t == 0)))


def test_steps_are_numbered_from_one_and_carry_the_encoded_obs_and_flags():
    session = protocol()
    first = session.step_request(np.array([1, 2, 3]), episode_start=True)
    assert (first.seq, first.session_id, list(first.obs), first.episode_start, first.deterministic) == \
        (1, "s1", [1.0, 2.0, 3.0], True, True)
    assert session.seq == 0  # nothing applied until the answer
    server = Server()
    assert server.run(session.step_plan(first)).seq == 1
    assert session.seq == 1 and session.step_request([0, 0, 0], deterministic=False).seq == 2
    assert not session.step_request([0, 0, 0], deterministic=False).deterministic
    assert session.metadata == ((SESSION_ID_METADATA, "s1"),) == (("x-session-id", "s1"),)


def test_a_bad_observation_fails_before_any_call():
    with pytest.raises(PolicyError, match="expected real numbers") as err:
        protocol().step_request(np.array(["a", "b", "c"]))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_transient_failure_is_resent_with_the_same_seq_after_a_growing_backoff():
    session = protocol(retries=3)
    server = Server(UNAVAILABLE, PolicyError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"))
    request = session.step_request([0, 0, 0])
    assert server.run(session.step_plan(request)).seq == 1
    assert [c.request for c in server.calls] == [request] * 3  # the very same request, seq 1
    assert server.pauses == [0.01, 0.02]
    assert session.seq == 1


def test_the_plan_yields_backoff_between_attempts():
    session = protocol(retries=1)
    request = session.step_request([0, 0, 0])
    plan = session.step_plan(request)
    assert plan.send(None) == Call("Step", request)
    assert plan.send(UNAVAILABLE) == Backoff(0.01)
    assert plan.send(None) == Call("Step", request)
    with pytest.raises(StopIteration) as done:
        plan.send(answer(request))
    assert done.value.value.seq == 1


def test_retries_run_out_then_the_last_error_is_raised_and_seq_stays():
    session = protocol(retries=2)
    server = Server(UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    with pytest.raises(PolicyError) as err:
        server.run(session.step_plan(session.step_request([0, 0, 0])))
    assert err.value is UNAVAILABLE and server.seqs == [1, 1, 1] and session.seq == 0
    steps(session, Server(), 1)  # the step can be sent again with the same seq
    assert session.seq == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED])
def test_a_non_transient_failure_is_raised_at_once(code):
    session = protocol()
    server = Server(PolicyError(code, "no"))
    with pytest.raises(PolicyError) as err:
        server.run(session.step_plan(session.step_request([0, 0, 0])))
    assert err.value.code == code and len(server.calls) == 1 and server.pauses == [] and session.seq == 0


def test_an_in_band_stream_error_counts_as_that_error():
    session = protocol(retries=1)
    request = session.step_request([0, 0, 0])
    plan = session.step_plan(request)
    plan.send(None)
    in_band = pb.StepResponse(seq=1, error=pb.StepError(code=grpc.StatusCode.UNAVAILABLE.value[0], message="draining"))
    assert plan.send(in_band) == Backoff(0.01)  # transient: resent
    plan.send(None)
    invalid = pb.StepResponse(error=pb.StepError(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="obs has 2"))
    with pytest.raises(PolicyError, match="obs has 2") as err:
        plan.send(invalid)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_answer_to_another_seq_is_a_protocol_error_not_applied():
    session = protocol()
    plan = session.step_plan(session.step_request([0, 0, 0]))
    plan.send(None)
    with pytest.raises(PolicyError, match="answered seq 7 to step seq 1") as err:
        plan.send(pb.StepResponse(seq=7))
    assert err.value.code == grpc.StatusCode.INTERNAL and session.seq == 0


def test_a_restored_server_gets_the_lost_steps_replayed_then_the_step():
    session = protocol()
    steps(session, Server(), 5)
    behind = PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "expected seq 3", expected_seq=3)
    server = Server(behind)
    request = session.step_request([0, 0, 0])
    assert server.run(session.step_plan(request)).seq == 6
    assert server.seqs == [6, 3, 4, 5, 6]
    assert [c.request.episode_start for c in server.calls[1:4]] == [False, False, False]
    assert session.seq == 6 and [r.seq for r in session.history] == [1, 2, 3, 4, 5, 6]


def test_the_replay_plan_is_none_for_other_errors_and_for_a_server_ahead():
    session = protocol()
    steps(session, Server(), 3)
    assert session.replay_plan(UNAVAILABLE) is None
    ahead = PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "stale client", expected_seq=9)  # not behind us
    assert session.replay_plan(ahead) is None
    with pytest.raises(PolicyError, match="stale client"):
        Server(ahead).run(session.step_plan(session.step_request([0, 0, 0])))
    assert [r.seq for r in session.replay_plan(PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "", expected_seq=2))] \
        == [2, 3]


def test_the_history_keeps_the_last_n_steps_and_says_when_the_lost_ones_are_gone():
    session = protocol(history=2)
    steps(session, Server(), 5)
    assert [r.seq for r in session.history] == [4, 5]
    assert [r.seq for r in session.replay_plan(PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "",
                                                           expected_seq=4))] == [4, 5]
    with pytest.raises(PolicyError, match=r"expects seq 2 .* at seq 5 .* holds seqs 4\.\.5,.* call resync\(\)") as err:
        session.replay_plan(PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "", expected_seq=2))
    assert err.value.expected_seq == 2
    session.resync(2)
    assert session.seq == 1 and not session.history and session.step_request([0, 0, 0]).seq == 2
    with pytest.raises(ValueError, match="expected_seq must be >= 1, got 0"):
        session.resync(0)


def test_no_history_means_nothing_kept_and_a_clear_error():
    session = protocol(history=0)
    steps(session, Server(), 3)
    assert len(session.history) == 0
    with pytest.raises(PolicyError, match="holds no steps"):
        session.replay_plan(PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "", expected_seq=3))
    with pytest.raises(ValueError, match="history must be >= 0 steps, got -1"):
        SessionProtocol(created(), history=-1)


def test_a_repeated_seq_replaces_the_step_it_repeats_in_the_history():
    session = protocol()
    steps(session, Server(), 3)
    session.seq = 2  # a caller resending seq 3 (it lost the answer)
    steps(session, Server(), 1)
    assert [r.seq for r in session.history] == [1, 2, 3] and session.seq == 3


def test_session_calls_carry_the_id_and_retry_and_close_once_ignoring_a_gone_session():
    session = protocol(retries=1)
    server = Server(UNAVAILABLE)
    server.run(session.reset_plan())
    assert [c.method for c in server.calls] == ["ResetSession", "ResetSession"]
    assert server.calls[0].request.session_id == "s1"
    with pytest.raises(PolicyError, match="state has tensors"):
        Server().run(session.set_state_plan({"nope": np.zeros((1, 4))}))
    server = Server(PolicyError(grpc.StatusCode.NOT_FOUND, "unknown session"))
    server.run(session.close_plan())
    server.run(session.close_plan())
    assert [c.method for c in server.calls] == ["CloseSession"]  # once
    other = protocol()
    with pytest.raises(PolicyError, match="denied"):
        Server(PolicyError(grpc.StatusCode.PERMISSION_DENIED, "denied")).run(other.close_plan())


def test_migrate_moves_the_session_to_the_answered_version():
    session = protocol()
    plan = session.migrate_plan("v2")
    call = plan.send(None)
    assert (call.method, call.request.session_id, call.request.version) == ("MigrateSession", "s1", "v2")
    with pytest.raises(StopIteration) as done:
        plan.send(pb.MigrateSessionResponse(model=pb.ModelInfo(name="q", version="v2", spec_json=SPEC.to_json())))
    assert done.value.value.version == session.model.version == "v2"


def test_create_session_is_never_retried():
    server = Server(UNAVAILABLE)
    with pytest.raises(PolicyError):
        server.run(create_plan("q", seed=3))
    assert len(server.calls) == 1 and server.calls[0].request.seed == 3
    assert not pb.CreateSessionRequest(model="q").HasField("seed")
    assert not Server().calls and next(create_plan("q", None)).request.HasField("seed") is False


def test_call_plan_without_a_policy_tries_once_and_policy_and_transport_are_validated():
    server = Server(UNAVAILABLE)
    with pytest.raises(PolicyError):
        server.run(call_plan("ListModels", pb.ListModelsRequest()))
    assert len(server.calls) == 1
    with pytest.raises(ValueError, match="retries must be >= 0, got -1"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="backoff must be >= 0 seconds, got -0.5"):
        RetryPolicy(backoff=-0.5)
    with pytest.raises(ValueError, match="transport must be one of 'stream', 'unary', got 'udp'"):
        check_transport("udp")


def test_the_asyncio_driver_runs_the_same_plan():
    session = protocol()
    steps(session, Server(), 2)
    server = Server(PolicyError(grpc.StatusCode.FAILED_PRECONDITION, "", expected_seq=2), UNAVAILABLE)
    pauses = []

    async def perform(call):
        return server.perform(call)

    async def pause(seconds):
        pauses.append(seconds)

    response = asyncio.run(drive_async(session.step_plan(session.step_request([0, 0, 0])), perform, pause))
    assert response.seq == 3 and server.seqs == [3, 2, 2, 3] and pauses == [0.01]
