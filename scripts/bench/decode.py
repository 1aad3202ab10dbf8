"""What the server pays to check request bytes before betterproto2 decodes them.

The server codec (``daveloper.rpc.encoded.PassThroughCodec``) parses each
request with protobuf's upb class first (``daveloper.rpc.decoding``), so
malformed bytes are INVALID_ARGUMENT instead of INTERNAL. Side by side in one
process: grpclib's plain ``ProtoCodec`` (betterproto2 alone, the baseline) and
the checked codec, on well-formed requests (µs per decode, best of 5 repeats),
then on a ``Struct`` nested 30,000 deep (time and peak traced memory: the plain
codec recurses until ``RecursionError``, the checked one refuses at depth 100).

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/decode.py [--quick] [--json]
    .venv/bin/python -m scripts.bench.decode [--quick] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import json
import time
import timeit
import tracemalloc
from typing import Any

from grpclib.encoding.proto import ProtoCodec

from daveloper.errors import InvalidArgument
from daveloper.rpc.encoded import PassThroughCodec, varint
from generated.daveloper.v1 import (
    ChatRequest,
    ListDocumentsRequest,
    SendMessage,
    UploadRequest,
    UpsertPointsRequest,
)
from scripts.bench._stats import table


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct_request(depth: int) -> bytes:
    """``UpsertPointsRequest`` whose one point's payload is a ``Struct`` nested ``depth`` times."""
    struct = b""
    for _ in range(depth):
        struct = _field(1, _field(1, b"a") + _field(2, _field(5, struct)))
    return _field(1, b"c") + _field(2, _field(1, b"1") + _field(4, struct))


CASES: dict[str, tuple[type[Any], bytes]] = {
    "ListDocumentsRequest (4 B)": (ListDocumentsRequest, bytes(ListDocumentsRequest(page_size=10))),
    "ChatRequest send (330 B)": (ChatRequest, bytes(ChatRequest(send=SendMessage(
        conversation_id="c1", text="How do I point the server at my Redis? " * 8, client_message_id="m1")))),
    "UploadRequest chunk (64 KiB)": (UploadRequest, bytes(UploadRequest(chunk=b"x" * 65536))),
}


def _best(call: Any, seconds: float) -> float:
    number = max(1, int(seconds * 20_000))
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def _hostile(codec: Any, data: bytes) -> dict[str, float | str]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        codec.decode(data, UpsertPointsRequest)
        outcome = "decoded"
    except InvalidArgument:
        outcome = "INVALID_ARGUMENT"
    except RecursionError:
        outcome = "RecursionError (INTERNAL)"
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"outcome": outcome, "ms": elapsed * 1000, "peak MiB": peak / 2**20}


def measure(seconds: float) -> dict[str, Any]:
    plain, checked = ProtoCodec(), PassThroughCodec()
    results: dict[str, Any] = {}
    for name, (kind, data) in CASES.items():
        results[name] = {
            "betterproto2 µs": _best(lambda kind=kind, data=data: plain.decode(data, kind), seconds),
            "checked µs": _best(lambda kind=kind, data=data: checked.decode(data, kind), seconds),
        }
    deep = nested_struct_request(30_000)
    results["Struct nested 30,000 deep"] = {"bytes": len(deep), "betterproto2": _hostile(plain, deep),
                                            "checked": _hostile(checked, deep)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a second or so")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    results = measure(0.01 if args.quick else 0.25)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    hostile = results.pop("Struct nested 30,000 deep")
    print("Request decode, best of 5 repeats:")
    print(table(["request", "betterproto2 alone µs", "checked (upb, then betterproto2) µs", "ratio checked/alone"],
                [[name, f"{r['betterproto2 µs']:.1f}", f"{r['checked µs']:.1f}",
                  f"{r['checked µs'] / r['betterproto2 µs']:.2f}"] for name, r in results.items()]))
    print(f"\nA Struct nested 30,000 deep ({hostile['bytes'] / 1024:.0f} KiB):")
    print(table(["codec", "outcome", "ms", "peak traced MiB"],
                [[codec, r["outcome"], f"{r['ms']:.1f}", f"{r['peak MiB']:.1f}"]
                 for codec, r in (("betterproto2 alone", hostile["betterproto2"]), ("checked", hostile["checked"]))]))


if __name__ == "__main__":
    main()
