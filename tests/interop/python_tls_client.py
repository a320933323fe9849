"""A Python grpcio client of the suite over TLS, with optional client certificate and token.

Usage: python_tls_client.py STUBS_DIR HOST:PORT OPTIONS_JSON, where OPTIONS_JSON holds "ca"
(PEM path), and optionally "cert" and "key" (PEM paths) and "token" (a bearer token).
Prints one JSON object: the health status (or the error code), and the code and ErrorInfo
reason of ListAlignJobs(page_size=-5), which needs the reader role.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import importlib.util  # noqa: E402

import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from vaccine.v1 import align_pb2, align_pb2_grpc  # noqa: E402

# The stubs' package "grpc.health.v1" is shadowed by the grpc library itself: load it by path.
_spec = importlib.util.spec_from_file_location("health_pb2", f"{sys.argv[1]}/grpc/health/v1/health_pb2.py")
health_pb2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(health_pb2)


def read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def reason(err):
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    if raw is None:
        return None
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


options = json.loads(sys.argv[3])
credentials = grpc.ssl_channel_credentials(
    root_certificates=read(options["ca"]),
    private_key=read(options.get("key")),
    certificate_chain=read(options.get("cert")),
)
metadata = [("authorization", "Bearer " + options["token"])] if options.get("token") else None
out = {}
# The server certificate names localhost; the channel dials the IP.
with grpc.secure_channel(sys.argv[2], credentials, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    try:
        status = check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    except grpc.RpcError as err:
        out["health"] = err.code().name
    try:
        align_pb2_grpc.AlignServiceStub(channel).ListAlignJobs(align_pb2.ListAlignJobsRequest(page_size=-5), metadata=metadata, timeout=10)
        out["list"] = {"code": "OK"}
    except grpc.RpcError as err:
        out["list"] = {"code": err.code().name, "reason": reason(err)}
print(json.dumps(out))
