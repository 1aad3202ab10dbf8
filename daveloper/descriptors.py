"""The descriptor pool of every service this server speaks, for reflection and the edge."""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.health.v1 import health_pb2
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

__all__ = ["DESCRIPTOR_SET", "load_descriptor_pool"]

#: Written by ``scripts/codegen.py``: our protos and everything they import.
DESCRIPTOR_SET = "descriptors.binpb"


def load_descriptor_pool() -> descriptor_pool.DescriptorPool:
    """A fresh pool with daveloper.v1, its imports, grpc.health.v1 and reflection.

    A private pool rather than protobuf's global default keeps loading free of
    import-time side effects and of clashes with other generated code.
    """
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("generated").joinpath(DESCRIPTOR_SET).read_bytes()
    )
    for module in (health_pb2, reflection_pb2, reflection_v1alpha_pb2):
        files.file.append(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    for file in files.file:  # --include_imports lists dependencies first
        pool.Add(file)
    return pool
