"""The asyncio client: ``AsyncPolicyClient`` and ``AsyncSession`` over ``grpc.aio``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from rnnpolicy.clients._channel import open_aio_channel, token_metadata
from rnnpolicy.clients._client import CHANNEL_OPTIONS, DEFAULT_HISTORY, SessionBase, check_history
from rnnpolicy.clients._convert import (
    ModelInfo,
    StepResult,
    model_info,
    state_message,
    state_tensors,
    step_result,
)
from rnnpolicy.clients._errors import RETRYABLE, PolicyError
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

__all__ = ["AsyncPolicyClient", "AsyncSession"]


class AsyncPolicyClient:
    """``PolicyClient`` for asyncio: ``async with AsyncPolicyClient(target) as client``."""

    def __init__(self, target: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.05,
                 token: str | None = None, tls: bool = False, tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None) -> None:
        """``token``, ``tls`` and the ``tls_*`` files as for :class:`~rnnpolicy.clients.PolicyClient`."""
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._channel = open_aio_channel(target, CHANNEL_OPTIONS, token=token, tls=tls, tls_ca=tls_ca,
                                         tls_cert=tls_cert, tls_key=tls_key)
        self._metadata = token_metadata(token.strip()) if token is not None else None
        self.stub = policy_pb2_grpc.PolicyServiceStub(self._channel)

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, method: str, request: Any, timeout: float | None = None, retry: bool = False) -> Any:
        rpc = getattr(self.stub, method)
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return await rpc(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if attempt + 1 < attempts and exc.code() in RETRYABLE:
                    await asyncio.sleep(self.backoff * (2 ** attempt))
                    continue
                raise PolicyError.from_rpc_error(exc) from None
        raise AssertionError("unreachable")

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        response = await self.call("ListModels", pb.ListModelsRequest(), timeout, retry=True)
        return [model_info(m) for m in response.models]

    async def session(self, model: str = "", *, seed: int | None = None, deterministic: bool = True,
                      timeout: float | None = None, history: int = DEFAULT_HISTORY) -> AsyncSession:
        """Open a session; use ``async with await client.session(...)`` or call ``await session.close()``."""
        check_history(history)  # before the session exists on the server
        request = pb.CreateSessionRequest(model=model, seed=seed) if seed is not None else pb.CreateSessionRequest(model=model)
        response = await self.call("CreateSession", request, timeout)
        return AsyncSession(self, response.session_id, model_info(response.model), deterministic, history)


class AsyncSession(SessionBase):
    """The asyncio twin of :class:`~rnnpolicy.clients.Session`."""

    client: AsyncPolicyClient

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def step(self, obs: Any, episode_start: bool = False, *, deterministic: bool | None = None,
                   timeout: float | None = None) -> StepResult:
        request = self._next_request(obs, episode_start, deterministic)
        try:
            response = await self.client.call("Step", request, timeout, retry=True)
        except PolicyError as error:
            replay = self._replay_plan(error)
            if replay is None:
                raise
            for old in replay:
                await self.client.call("Step", old, timeout, retry=True)
            response = await self.client.call("Step", request, timeout, retry=True)
        self._applied(request, response)
        return step_result(response, self._discrete)

    async def reset(self, timeout: float | None = None) -> None:
        await self.client.call("ResetSession", pb.ResetSessionRequest(session_id=self.session_id), timeout, retry=True)

    async def get_state(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        return state_tensors(await self.client.call(
            "GetSessionState", pb.GetSessionStateRequest(session_id=self.session_id), timeout, retry=True))

    async def set_state(self, state: dict[str, np.ndarray], timeout: float | None = None) -> None:
        await self.client.call("SetSessionState", state_message(self.spec, self.session_id, state), timeout, retry=True)

    async def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.session_id), timeout)
        except PolicyError as exc:
            if exc.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
