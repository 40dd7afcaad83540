"""Every per-session call of the Python clients carries the session id as gRPC metadata ``x-session-id``
(a stream in its initial metadata), so a proxy can route on it; calls without a session carry none."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from recording_server import start_recording_server

from rnnpolicy.clients import AsyncPolicyClient, PolicyClient

PER_SESSION = {"Step", "StepStream", "ResetSession", "CloseSession", "GetSessionState", "SetSessionState",
               "MigrateSession"}
TOKEN = "metadata-test-token-0123"


@pytest.fixture
def recording():
    server, servicer, target = start_recording_server()
    yield servicer, target
    server.stop(None)


def exercise_sync(client: PolicyClient, transport: str) -> str:
    client.list_models()
    with client.session("q", transport=transport) as session:
        for t in range(3):
            session.step([0.1, 0.2, 0.3], episode_start=t == 0)
        state = session.get_state()
        session.set_state(state)
        session.reset()
        session.migrate()
        return session.session_id


async def exercise_async(client: AsyncPolicyClient, transport: str) -> str:
    await client.list_models()
    async with client.session("q", transport=transport) as session:
        for t in range(3):
            await session.step([0.1, 0.2, 0.3], episode_start=t == 0)
        await session.set_state(await session.get_state())
        await session.reset()
        await session.migrate()
        return session.session_id


def assert_session_metadata(calls: list, session_id: str, stepped_by: str, token: str | None = None) -> None:
    methods = [method for method, _, _ in calls]
    assert methods.count(stepped_by) == 3, methods
    assert set(methods) == {"ListModels", "CreateSession", stepped_by} | (PER_SESSION - {"Step", "StepStream"})
    for method, metadata, request_session in calls:
        if method in PER_SESSION:
            assert metadata.get("x-session-id") == session_id == request_session, (method, metadata)
        else:
            assert "x-session-id" not in metadata, (method, metadata)
        if token is not None:
            assert metadata.get("authorization") == f"Bearer {token}", (method, metadata)


@pytest.mark.parametrize("transport, rpc", [("stream", "StepStream"), ("unary", "Step")])
def test_the_sync_client_sends_x_session_id_on_every_per_session_call(recording, transport, rpc):
    servicer, target = recording
    with PolicyClient(target, token=TOKEN) as client:
        session_id = exercise_sync(client, transport)
    assert_session_metadata(servicer.calls, session_id, rpc, TOKEN)


@pytest.mark.parametrize("transport, rpc", [("stream", "StepStream"), ("unary", "Step")])
def test_the_asyncio_client_sends_x_session_id_on_every_per_session_call(recording, transport, rpc):
    servicer, target = recording

    async def run() -> str:
        async with AsyncPolicyClient(target, token=TOKEN) as client:
            return await exercise_async(client, transport)

    assert_session_metadata(servicer.calls, asyncio.run(run()), rpc, TOKEN)


def test_each_session_streams_on_its_own_stream_with_its_own_id(recording):
    servicer, target = recording
    with PolicyClient(target) as client, client.session("q") as a, client.session("q") as b:
        for _ in range(2):
            a.step(np.zeros(3))
            b.step(np.zeros(3))
        ids = {a.session_id, b.session_id}
    streamed = [(metadata["x-session-id"], session) for method, metadata, session in servicer.calls
                if method == "StepStream"]
    assert len(streamed) == 4 and {m for m, _ in streamed} == ids and all(m == s for m, s in streamed)


@pytest.mark.parametrize("transport", ["stream", "unary"])
def test_an_affinity_travels_as_x_session_affinity_from_create_session_on(recording, transport):
    servicer, target = recording

    async def run_async() -> None:
        async with AsyncPolicyClient(target, token=TOKEN) as client:
            async with client.session("q", transport=transport, affinity="game-7") as session:
                await session.step([0.1, 0.2, 0.3])

    with PolicyClient(target) as client, client.session("q", transport=transport, affinity="game-7") as session:
        session.step([0.1, 0.2, 0.3])
    asyncio.run(run_async())
    with PolicyClient(target) as client, client.session("q", transport=transport) as session:
        session.step([0.1, 0.2, 0.3])
    calls = [(method, metadata) for method, metadata, _ in servicer.calls]
    with_affinity, without = calls[:len(calls) * 2 // 3], calls[len(calls) * 2 // 3:]
    assert [m for m, _ in with_affinity].count("CreateSession") == 2
    assert all(metadata.get("x-session-affinity") == "game-7" for _, metadata in with_affinity), with_affinity
    assert all("x-session-affinity" not in metadata for _, metadata in without), without
