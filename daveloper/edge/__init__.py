"""The edge: browsers and curl reach every gRPC method through one WebSocket protocol and HTTP/JSON.

Driven by the descriptor pool, so a new RPC needs no edge code. The protocol
is specified in ``docs/websocket-protocol.md``.
"""

from daveloper.edge.server import Edge, open_edge

__all__ = ["Edge", "open_edge"]
