"""The committed generated code is what protoc makes of policy.proto today, and imports unpatched."""

import pytest


def test_regenerating_changes_nothing():
    pytest.importorskip("grpc_tools")
    from rnnpolicy.v1 import regenerate

    assert regenerate.main(["--check"]) == 0


def test_generated_modules_import_under_the_package():
    from rnnpolicy.v1 import policy_pb2, policy_pb2_grpc

    assert policy_pb2.DESCRIPTOR.package == "rnnpolicy.v1"
    assert "PolicyService" in policy_pb2.DESCRIPTOR.services_by_name
    assert policy_pb2_grpc.PolicyServiceStub.__module__ == "rnnpolicy.v1.policy_pb2_grpc"
