#!/usr/bin/env python3
"""A generic gRPC client: no generated code, only what server reflection tells it.

Usage: grpc_status.py HOST:PORT  -> prints {"services": [...], "status": {...}} as JSON.
"""
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    channel = grpc.insecure_channel(sys.argv[1])
    db = ProtoReflectionDescriptorDatabase(channel)
    services = list(db.get_services())
    pool = DescriptorPool(db)
    method = pool.FindServiceByName("v1.Node").FindMethodByName("GetStatus")
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/v1.Node/GetStatus",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    status = call(request(), timeout=10)
    print(json.dumps({"services": services, "status": json_format.MessageToDict(status)}))


if __name__ == "__main__":
    main()
