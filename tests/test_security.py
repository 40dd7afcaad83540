"""Serving security against real in-process servers: TLS, mutual TLS, bearer tokens, principals and ownership."""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tls_certs import have_openssl, make_pki, write_tokens

from rnnpolicy.clients import AsyncPolicyClient, PolicyClient, PolicyError
from rnnpolicy.clients._channel import is_loopback_target, read_token_file, resolve_token
from rnnpolicy.serve import create_server
from rnnpolicy.serve.auth import Security, TokenAuthInterceptor, load_tokens, parse_tokens, principal_of
from rnnpolicy.serve.cli import add_serve_arguments
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

TOKEN_A = "alice-token-0123456789abcdef"
TOKEN_B = "bob-token-fedcba9876543210xyz"
OBS = [0.1, -0.2, 0.3, 0.0, 0.5]  # q_lstm: obs_dim 5
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not have_openssl():
        pytest.skip("the openssl command line is needed to make test certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return write_tokens(tmp_path_factory.mktemp("auth") / "tokens", {"alice": TOKEN_A, "bob": TOKEN_B})


@pytest.fixture(scope="module")
def q_model(serve_export_dirs):
    return {"q_lstm": serve_export_dirs["q_lstm"]}


def _serve(models, **security):
    server, port = create_server(models, "127.0.0.1:0", security=Security(**security))
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def auth_server(q_model, tokens):
    """Plaintext with token auth."""
    server, target = _serve(q_model, auth_tokens=tokens)
    yield target
    server.stop(None)


@pytest.fixture(scope="module")
def tls_server(q_model, pki, tokens):
    """TLS with token auth."""
    server, target = _serve(q_model, tls_cert=pki.server_cert, tls_key=pki.server_key, auth_tokens=tokens)
    yield target
    server.stop(None)


@pytest.fixture(scope="module")
def mtls_server(q_model, pki):
    """Mutual TLS, no tokens."""
    server, target = _serve(q_model, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    yield target
    server.stop(None)


def _stub(target, token=None, credentials=None):
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return channel, policy_pb2_grpc.PolicyServiceStub(channel), metadata


def _code(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=5, **kwargs)
    return err.value.code(), err.value.details()


# ---------------------------------------------------------------------------------------------- tokens


def test_missing_and_wrong_tokens_are_unauthenticated_without_naming_tokens(auth_server):
    channel, stub, _ = _stub(auth_server)
    with channel:
        code, message = _code(stub.ListModels, pb.ListModelsRequest())
        assert code == UNAUTH and "authorization: Bearer" in message
        code, message = _code(stub.CreateSession, pb.CreateSessionRequest(model="q_lstm"),
                              metadata=(("authorization", "Bearer not-a-token-but-long-enough"),))
        assert code == UNAUTH and message == "the token is not valid for this server"
        assert TOKEN_A not in message and "alice" not in message
        for bad in ("Basic " + TOKEN_A, TOKEN_A, "Bearer"):
            code, message = _code(stub.ListModels, pb.ListModelsRequest(), metadata=(("authorization", bad),))
            assert code == UNAUTH and "malformed" in message
        # streaming calls are refused the same way
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StepStream(iter([pb.StepRequest(session_id="x", seq=1, obs=OBS)]), timeout=5))
        assert err.value.code() == UNAUTH


def test_right_token_works_for_unary_and_streaming_calls(auth_server):
    channel, stub, metadata = _stub(auth_server, TOKEN_A)
    with channel:
        assert stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5).models[0].name == "q_lstm"
        sid = stub.CreateSession(pb.CreateSessionRequest(model="q_lstm"), metadata=metadata, timeout=5).session_id
        answers = list(stub.StepStream(iter([pb.StepRequest(session_id=sid, seq=s, obs=OBS) for s in (1, 2)]),
                                       metadata=metadata, timeout=5))
        assert [a.seq for a in answers] == [1, 2] and not any(a.HasField("error") for a in answers)
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=metadata, timeout=5)


def test_health_needs_no_token_but_reflection_does(auth_server):
    with grpc.insecure_channel(auth_server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=5))
        assert err.value.code() == UNAUTH
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                      timeout=5, metadata=(("authorization", f"Bearer {TOKEN_B}"),)))
        assert "rnnpolicy.v1.PolicyService" in {s.name for s in answer.list_services_response.service}


def test_principal_of_names_the_token_owner_and_is_empty_without_auth():
    digests = parse_tokens(f"alice {TOKEN_A}\nbob {TOKEN_B}\n")
    interceptor = TokenAuthInterceptor(digests)
    assert interceptor.principals == {"alice", "bob"}
    assert interceptor.authenticate((("authorization", f"Bearer {TOKEN_B}"),)) == ("bob", "")
    assert interceptor.authenticate((("authorization", f"bearer  {TOKEN_A} "),))[0] == "alice"
    assert interceptor.authenticate(())[0] is None

    class Context:  # stands in for a grpc.ServicerContext the interceptor never saw
        pass

    assert principal_of(Context()) == "" and principal_of(object()) == ""

    seen = []

    def behavior(request, context):  # a plain handler: this server runs none (no thread pool)
        return "done"

    async def async_behavior(request, context):  # a coroutine handler on the event loop
        seen.append(principal_of(context))
        return "done async"

    details = type("Details", (), {"method": "/rnnpolicy.v1.PolicyService/ListModels",
                                   "invocation_metadata": (("authorization", f"Bearer {TOKEN_B}"),)})()

    async def intercept(handler):
        async def continuation(details):
            return handler

        return await interceptor.intercept_service(continuation, details)

    with pytest.raises(TypeError, match="behavior must be a coroutine or an async generator"):
        asyncio.run(intercept(grpc.unary_unary_rpc_method_handler(behavior)))
    wrapped = asyncio.run(intercept(grpc.unary_unary_rpc_method_handler(async_behavior)))
    assert asyncio.run(wrapped.unary_unary(None, Context())) == "done async" and seen == ["bob"]
    assert principal_of(Context()) == ""  # set for the call only


# ---------------------------------------------------------------------------------------------- token files


@pytest.mark.parametrize("text, error", [
    ("", r"tokens:.*no tokens"),
    ("# only a comment\n\n", r"tokens:.*no tokens"),
    (f"alice {TOKEN_A}\nbob\n", r"tokens:2: expected 'PRINCIPAL TOKEN'.*got 1 field"),
    (f"alice {TOKEN_A} extra\n", r"tokens:1: expected 'PRINCIPAL TOKEN'.*got 3 fields"),
    (f"\n# c\nalice {TOKEN_A}\nbob {TOKEN_A}\n", r"tokens:4: this token is already given on line 3 \(principal 'alice'\)"),
    ("alice short-token\n", r"tokens:1: the token of principal 'alice' has 11 characters, expected at least 16"),
    ("alice bad\"token-0123456789\n", r"tokens:1: the token of principal 'alice' has characters outside"),
    (f"-alice {TOKEN_A}\n", r"tokens:1: principal '-alice' is not valid"),
])
def test_token_file_errors_name_the_file_and_line(tmp_path, text, error):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=error) as err:
        load_tokens(path)
    assert str(path) in str(err.value) and TOKEN_A not in str(err.value)


def test_token_file_comments_rotation_and_unreadable_files(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text(f"# header\n\nalice {TOKEN_A}   # trailing comment\nalice {TOKEN_B}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.INFO, logger="rnnpolicy.serve"):
        digests = load_tokens(path)
    assert sorted(digests.values()) == ["alice", "alice"]
    assert "can be read by any user" in caplog.text and TOKEN_A not in caplog.text
    with pytest.raises(ValueError, match=f"cannot read token file {tmp_path / 'missing'}"):
        load_tokens(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- TLS


def test_plaintext_client_to_a_tls_port_fails_and_a_tls_client_works(tls_server, pki):
    channel, stub, metadata = _stub(tls_server, TOKEN_A)
    with channel:
        code, _ = _code(stub.ListModels, pb.ListModelsRequest(), metadata=metadata)
        assert code == grpc.StatusCode.UNAVAILABLE
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    channel, stub, metadata = _stub(tls_server, TOKEN_A, credentials)
    with channel:
        assert stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5).models
        code, _ = _code(stub.ListModels, pb.ListModelsRequest())  # TLS alone is not a token
        assert code == UNAUTH
    # a client that does not trust the server's CA refuses the connection
    untrusting = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.read_bytes())
    channel, stub, metadata = _stub(tls_server, TOKEN_A, untrusting)
    with channel:
        assert _code(stub.ListModels, pb.ListModelsRequest(), metadata=metadata)[0] == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca(mtls_server, pki):
    ca = pki.ca.read_bytes()
    refused = [grpc.ssl_channel_credentials(root_certificates=ca),
               grpc.ssl_channel_credentials(root_certificates=ca, private_key=pki.other_client_key.read_bytes(),
                                            certificate_chain=pki.other_client_cert.read_bytes())]
    for credentials in refused:
        channel, stub, _ = _stub(mtls_server, credentials=credentials)
        with channel:
            assert _code(stub.ListModels, pb.ListModelsRequest())[0] == grpc.StatusCode.UNAVAILABLE
    with PolicyClient(mtls_server, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key) as client:
        assert [m.name for m in client.list_models()] == ["q_lstm"]


def test_bad_certificate_files_are_value_errors_naming_the_file(q_model, pki, tmp_path):
    missing = tmp_path / "missing.pem"
    cases = [
        (dict(tls_cert=missing, tls_key=pki.server_key), f"cannot read TLS certificate {missing}"),
        (dict(tls_cert=pki.server_key, tls_key=pki.server_key), f"TLS certificate {pki.server_key} holds no PEM"),
        (dict(tls_cert=pki.server_cert, tls_key=pki.server_cert), f"TLS key {pki.server_cert} holds no PEM private key"),
        (dict(tls_cert=pki.server_cert, tls_key=pki.client_key),
         f"TLS key {pki.client_key} does not belong to the certificate {pki.server_cert}"),
        (dict(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.client_key),
         f"TLS client CA {pki.client_key} holds no PEM certificate"),
    ]
    for security, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            create_server(q_model, "127.0.0.1:0", security=Security(**security))
    with pytest.raises(ValueError, match="tls_cert is given but tls_key is not"):
        Security(tls_cert=pki.server_cert)
    with pytest.raises(ValueError, match="needs the server's own certificate"):
        Security(tls_client_ca=pki.ca)
    with pytest.raises(ValueError, match=f"TLS certificate {pki.client_cert} and key {pki.server_key}"):
        PolicyClient("127.0.0.1:1", tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.server_key)


# ---------------------------------------------------------------------------------------------- clients


def test_clients_with_token_and_tls_step_a_session_end_to_end(tls_server, pki):
    obs = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    with PolicyClient(tls_server, token=TOKEN_A, tls_ca=pki.ca) as client:
        with client.session("q_lstm", transport="unary") as unary, client.session("q_lstm") as stream:
            for i, o in enumerate(obs):
                a, b = unary.step(o, episode_start=i == 0), stream.step(o, episode_start=i == 0)
                assert a.action == b.action and a.seq == b.seq == i + 1
            assert unary.get_state()["state_h"].shape == (1, 16)
    with PolicyClient(tls_server, tls_ca=pki.ca) as client:
        with pytest.raises(PolicyError) as err:
            client.list_models()
        assert err.value.code == UNAUTH

    async def drive():
        async with AsyncPolicyClient(tls_server, token=TOKEN_B, tls_ca=pki.ca) as client:
            async with client.session("q_lstm") as session:
                return [(await session.step(o, episode_start=i == 0)).seq for i, o in enumerate(obs)]

    assert asyncio.run(drive()) == [1, 2, 3, 4]


def test_token_over_plaintext_works_on_loopback_and_warns_elsewhere(auth_server):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with PolicyClient(auth_server, token=TOKEN_A) as client:
            assert client.list_models()
    with pytest.warns(UserWarning, match="over plaintext"):
        PolicyClient("10.1.2.3:50051", token=TOKEN_A).close()
    assert is_loopback_target("localhost:1") and is_loopback_target("[::1]:1") and is_loopback_target("unix:/tmp/s")
    assert is_loopback_target("dns:///127.0.0.1:5") and not is_loopback_target("example.com:443")


def test_client_token_sources(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(f"# my token\n{TOKEN_A}\n")
    assert read_token_file(path) == TOKEN_A
    assert resolve_token(token_file=path, environ={}) == TOKEN_A
    assert resolve_token(token=TOKEN_B, environ={}) == TOKEN_B
    assert resolve_token(environ={"RNNPOLICY_TOKEN": TOKEN_B}) == TOKEN_B
    assert resolve_token(environ={}) is None
    with pytest.raises(ValueError, match="not both"):
        resolve_token(TOKEN_A, path)
    path.write_text(f"alice {TOKEN_A}\n")
    with pytest.raises(ValueError, match=f"token file {path}: the token alone|token file {path} has characters"):
        read_token_file(path)


def test_play_cli_with_token_file_env_token_and_tls(serve_export_dirs, pki, tokens, tmp_path, monkeypatch, capsys):
    import argparse

    from rnnpolicy.clients.cli import add_play_arguments, run_play

    server, target = _serve({"tmaze": serve_export_dirs["tmaze"]}, tls_cert=pki.server_cert, tls_key=pki.server_key,
                            tls_client_ca=pki.ca, auth_tokens=tokens)
    try:
        parser = argparse.ArgumentParser()
        add_play_arguments(parser)
        common = ["--target", target, "--env", "rnnpolicy/TMaze-v0", "--episodes", "1", "--tls-ca", str(pki.ca),
                  "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        token_file = tmp_path / "my.token"
        token_file.write_text(TOKEN_A + "\n")
        assert run_play(parser.parse_args([*common, "--token-file", str(token_file)])) == 0
        monkeypatch.setenv("RNNPOLICY_TOKEN", TOKEN_B)
        assert run_play(parser.parse_args(common)) == 0
        assert capsys.readouterr().out.count("episode 0: return") == 2
        monkeypatch.delenv("RNNPOLICY_TOKEN")
        with pytest.raises(ValueError, match="UNAUTHENTICATED"):
            run_play(parser.parse_args(common))
    finally:
        server.stop(None)


def test_serve_cli_has_the_security_flags():
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--model", "m", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca",
                              "--auth-tokens", "t"])
    security = Security(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                        auth_tokens=args.auth_tokens)
    assert security.describe() == "tls=mutual auth=tokens"
    assert "one 'PRINCIPAL TOKEN' per line" in " ".join(parser.format_help().split())


# ---------------------------------------------------------------------------------------------- ownership


def test_another_principal_cannot_touch_a_session_and_learns_nothing(auth_server):
    channel = grpc.insecure_channel(auth_server)
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    a = (("authorization", f"Bearer {TOKEN_A}"),)
    b = (("authorization", f"Bearer {TOKEN_B}"),)
    with channel:
        sid = stub.CreateSession(pb.CreateSessionRequest(model="q_lstm"), metadata=a, timeout=5).session_id
        stub.Step(pb.StepRequest(session_id=sid, seq=1, obs=OBS), metadata=a, timeout=5)
        ghost = uuid.uuid4().hex
        calls = [
            ("Step", lambda s: pb.StepRequest(session_id=s, seq=2, obs=OBS)),
            ("GetSessionState", lambda s: pb.GetSessionStateRequest(session_id=s)),
            ("SetSessionState", lambda s: pb.SetSessionStateRequest(session_id=s)),
            ("ResetSession", lambda s: pb.ResetSessionRequest(session_id=s)),
            ("CloseSession", lambda s: pb.CloseSessionRequest(session_id=s)),
        ]
        for method, request in calls:
            code, message = _code(getattr(stub, method), request(sid), metadata=b)
            ghost_code, ghost_message = _code(getattr(stub, method), request(ghost), metadata=b)
            assert code == ghost_code == grpc.StatusCode.PERMISSION_DENIED, method
            assert message == ghost_message.replace(ghost, sid), method
        # in-band errors: StepStream answers each step, StepBatch each row
        answer = next(stub.StepStream(iter([pb.StepRequest(session_id=sid, seq=2, obs=OBS)]), metadata=b, timeout=5))
        assert answer.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        batch = stub.StepBatch(pb.StepBatchRequest(session_ids=[sid, ghost], seqs=[2, 1], obs=OBS * 2), metadata=b,
                               timeout=5)
        assert [e.code for e in batch.errors] == [grpc.StatusCode.PERMISSION_DENIED.value[0]] * 2
        assert batch.errors[0].message == batch.errors[1].message.replace(ghost, sid)
        # A's session is untouched: its next step is seq 2
        assert stub.Step(pb.StepRequest(session_id=sid, seq=2, obs=OBS), metadata=a, timeout=5).seq == 2
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=a, timeout=5)
