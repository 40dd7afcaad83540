"""The generated Envoy configuration: what it routes on, and that a real Envoy accepts it."""

from __future__ import annotations

import json
import subprocess

import pytest
from cluster_procs import require_envoy

from rnnpolicy.cli import main
from rnnpolicy.serve.envoy_config import (AFFINITY_HEADER, SESSION_HEADER, EnvoyOptions, envoy_config,
                                          write_envoy_config)


def _route(config: dict) -> dict:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]


def _cluster(config: dict) -> dict:
    return config["static_resources"]["clusters"][0]


def _envoy_validate(path) -> subprocess.CompletedProcess:
    return subprocess.run([require_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


def test_routes_by_affinity_then_session_id_with_consistent_hashing():
    config = envoy_config(["127.0.0.1:9001", "127.0.0.1:9002"], "127.0.0.1:9000")
    route = _route(config)
    assert route["hash_policy"] == [{"header": {"header_name": AFFINITY_HEADER}, "terminal": True},
                                    {"header": {"header_name": SESSION_HEADER}}]
    assert route["timeout"] == "0s"  # long-lived streams
    retry = route["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {"reset", "unavailable", "refused-stream", "connect-failure", "cancelled"}
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    # a retry walks the ring to a host not tried yet; with 5 looks, 1 session in 3**5 found only the draining one
    assert retry["host_selection_retry_max_attempts"] >= 32
    cluster = _cluster(config)
    assert cluster["lb_policy"] == "RING_HASH" and cluster["type"] == "STATIC"
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0.0}
    check = cluster["health_checks"][0]
    assert check["grpc_health_check"] == {"service_name": "rnnpolicy.v1.PolicyService"}
    assert check["no_traffic_interval"] == check["interval"] == "1s"
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] == 100_000
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [9001, 9002]
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_host_names_are_resolved_by_dns_and_maglev_is_a_choice():
    cluster = _cluster(envoy_config(["replica-0.rnnpolicy:50051", "10.0.0.2:50051"], "0.0.0.0:9000",
                                    EnvoyOptions(lb_policy="MAGLEV", admin=None)))
    assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] == "MAGLEV"


def test_tls_at_the_listener_and_to_the_replicas(tmp_path):
    config = envoy_config(["127.0.0.1:9001"], "127.0.0.1:9000", EnvoyOptions(
        tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem", upstream_tls_ca="ca.pem", upstream_sni="replica"))
    downstream = config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert downstream["require_client_certificate"] is True
    assert downstream["common_tls_context"]["alpn_protocols"] == ["h2"]
    upstream = _cluster(config)["transport_socket"]["typed_config"]
    assert upstream["sni"] == "replica" and upstream["common_tls_context"]["validation_context"]["trusted_ca"]


@pytest.mark.parametrize("replicas, listen, options, match", [
    ([], "127.0.0.1:9000", EnvoyOptions(), "at least one replica"),
    (["127.0.0.1:9001", "127.0.0.1:9001"], "127.0.0.1:9000", EnvoyOptions(), "given twice"),
    (["127.0.0.1"], "127.0.0.1:9000", EnvoyOptions(), "replica '127.0.0.1': expected HOST:PORT"),
    (["127.0.0.1:9001"], "9000", EnvoyOptions(), "listen address '9000': expected HOST:PORT"),
])
def test_bad_addresses_are_named(replicas, listen, options, match):
    with pytest.raises(ValueError, match=match):
        envoy_config(replicas, listen, options)


@pytest.mark.parametrize("options, match", [
    ({"lb_policy": "ROUND_ROBIN"}, "lb_policy must be one of RING_HASH, MAGLEV, got 'ROUND_ROBIN'"),
    ({"tls_cert": "c.pem"}, "needs both a certificate"),
    ({"tls_client_ca": "ca.pem"}, "needs --tls-cert"),
    ({"health_interval": 0}, "health_interval must be > 0"),
    ({"admin": "localhost"}, "admin address 'localhost'"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        EnvoyOptions(**options)


def test_a_real_envoy_accepts_the_configuration(tmp_path):
    plain = write_envoy_config(tmp_path / "plain.json", ["127.0.0.1:9001", "localhost:9002"], "127.0.0.1:9000")
    check = _envoy_validate(plain)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_real_envoy_accepts_the_tls_configuration(tmp_path):
    from tls_certs import have_openssl, make_pki

    if not have_openssl():
        pytest.skip("the openssl command line is needed to make test certificates")
    pki = make_pki(tmp_path / "pki")
    path = write_envoy_config(tmp_path / "tls.json", ["127.0.0.1:9001"], "127.0.0.1:9000", EnvoyOptions(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca),
        upstream_tls_ca=str(pki.ca), upstream_sni="localhost", lb_policy="MAGLEV"))
    check = _envoy_validate(path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_real_envoy_rejects_a_broken_configuration(tmp_path):
    """The validation the tests rely on does catch mistakes."""
    config = envoy_config(["127.0.0.1:9001"], "127.0.0.1:9000")
    _cluster(config)["lb_policy"] = "NO_SUCH_POLICY"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(config))
    assert _envoy_validate(path).returncode != 0


def test_the_command_writes_and_validates(tmp_path, capsys):
    require_envoy()
    out = tmp_path / "envoy.yaml"
    assert main(["envoy-config", "--replica", "127.0.0.1:9001", "--replica", "127.0.0.1:9002",
                 "--listen", "127.0.0.1:9100", "--out", str(out), "--validate"]) == 0
    assert "OK" in capsys.readouterr().err
    assert _route(json.loads(out.read_text()))["cluster"] == "rnnpolicy_replicas"


def test_the_command_prints_to_stdout_and_names_bad_input(capsys):
    assert main(["envoy-config", "--replica", "127.0.0.1:9001", "--admin", "none"]) == 0
    assert "admin" not in json.loads(capsys.readouterr().out)
    assert main(["envoy-config", "--replica", "nowhere"]) == 2
    assert "replica 'nowhere': expected HOST:PORT" in capsys.readouterr().err
    assert main(["envoy-config", "--replica", "127.0.0.1:9001", "--tls-cert", "missing.pem", "--tls-key", "k"]) == 2
    assert "--tls-cert 'missing.pem': no such file" in capsys.readouterr().err
