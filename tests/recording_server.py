"""A tiny PolicyService on loopback that answers every RPC without a model and records each call's metadata.

For tests of what clients put on the wire (``x-session-id``, ``authorization``): ``calls`` holds
``(method, metadata dict, session_id of the request)`` per call, and per message of a ``StepStream``.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.spec import ActionSpec, PolicySpec
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

SPEC = PolicySpec(kind="q", cell="lstm", num_layers=1, hidden_size=4, obs_encoding=ObsEncoding.flat(3),
                  action=ActionSpec("discrete", n=2))
MODEL = pb.ModelInfo(name="q", version="v1", obs_shape=[3], action=pb.ActionSpace(kind="discrete", n=2),
                     kind="q", cell="lstm", spec_json=SPEC.to_json(), latest=True)


class RecordingServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], str]] = []
        self._lock = threading.Lock()
        self._sessions = 0

    def _record(self, method: str, context, session_id: str = "") -> None:
        with self._lock:
            self.calls.append((method, dict(context.invocation_metadata()), session_id))

    def ListModels(self, request, context):
        self._record("ListModels", context)
        return pb.ListModelsResponse(models=[MODEL])

    def CreateSession(self, request, context):
        self._record("CreateSession", context)
        with self._lock:
            self._sessions += 1
            return pb.CreateSessionResponse(session_id=f"session-{self._sessions}", model=MODEL)

    def Step(self, request, context):
        self._record("Step", context, request.session_id)
        return _answer(request)

    def StepStream(self, request_iterator, context):
        for request in request_iterator:
            self._record("StepStream", context, request.session_id)
            yield _answer(request)

    def ResetSession(self, request, context):
        self._record("ResetSession", context, request.session_id)
        return pb.ResetSessionResponse()

    def CloseSession(self, request, context):
        self._record("CloseSession", context, request.session_id)
        return pb.CloseSessionResponse()

    def GetSessionState(self, request, context):
        self._record("GetSessionState", context, request.session_id)
        return pb.GetSessionStateResponse(names=["state_h", "state_c"],
                                          state=[pb.Tensor(shape=[1, 4], data=[0.0] * 4)] * 2)

    def SetSessionState(self, request, context):
        self._record("SetSessionState", context, request.session_id)
        return pb.SetSessionStateResponse()

    def MigrateSession(self, request, context):
        self._record("MigrateSession", context, request.session_id)
        return pb.MigrateSessionResponse(model=MODEL)


def _answer(request: pb.StepRequest) -> pb.StepResponse:
    return pb.StepResponse(session_id=request.session_id, seq=request.seq, discrete_action=1, q_values=[0.5, 0.25],
                           model_version="v1")


def start_recording_server() -> tuple[grpc.Server, RecordingServicer, str]:
    """A started server on a free loopback port, its servicer, and its target; ``server.stop(None)`` when done."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = RecordingServicer()
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, servicer, f"127.0.0.1:{port}"
