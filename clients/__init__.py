"""Python clients for rnnpolicy's PolicyService: synchronous and asyncio (torch-free).

>>> with PolicyClient("127.0.0.1:50051") as client, client.session("tmaze") as session:
...     result = session.step(obs, episode_start=True)

A session steps over a stream of its own (``transport="unary"``: one ``Step`` call per step); every call on it
carries the metadata ``x-session-id``. ``async with AsyncPolicyClient(target) as client, client.session(model) as s``
is the same for asyncio. Every failed call raises :class:`PolicyError` with the gRPC status ``code`` and the
server's ``message``.
"""

from rnnpolicy.clients._aio import AsyncPolicyClient, AsyncSession
from rnnpolicy.clients._client import PolicyClient, Session, StreamSession
from rnnpolicy.clients._convert import ModelInfo, StepResult, encode_obs
from rnnpolicy.clients._errors import RETRYABLE, PolicyError

__all__ = [
    "RETRYABLE",
    "AsyncPolicyClient",
    "AsyncSession",
    "ModelInfo",
    "PolicyClient",
    "PolicyError",
    "Session",
    "StepResult",
    "StreamSession",
    "encode_obs",
]
