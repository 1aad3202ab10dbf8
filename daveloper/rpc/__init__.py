"""The thin framework layer over grpclib that every servicer stands on."""

from daveloper.rpc.call import Call, Principal
from daveloper.rpc.interceptor import Interceptor
from daveloper.rpc.servicer import Authenticator, Gate, Servicer, public

__all__ = ["Authenticator", "Call", "Gate", "Interceptor", "Principal", "Servicer", "public"]
