"""What it costs to encode and decode a typical chat event.

Compares betterproto2 (the generated dataclasses every servicer uses) with
Google's ``protobuf`` (upb, C) on the very same wire bytes, for binary
encode/decode and for proto3 JSON (what the WebSocket edge will speak).

    .venv/bin/python -m scripts.bench.codec [--quick] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import timeit
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, message_factory

from daveloper.descriptors import load_descriptor_pool
from generated.daveloper.v1 import ChatEvent, ChatResponse, TokenDelta
from scripts.bench._stats import table


def chat_event() -> ChatResponse:
    """A token-delta event as the agent streams it."""
    return ChatResponse(event=ChatEvent(
        seq=1234,
        conversation_id="c_6f1d2a9e4b7c4f0d",
        turn_id="t_91b2c3d4e5f6a7b8",
        create_time=datetime.datetime(2026, 11, 28, 12, 30, 15, 123456, tzinfo=datetime.UTC),
        token_delta=TokenDelta(text=" the function returns"),
    ))


def per_call_us(function: Callable[[], Any], budget: float) -> float:
    """Microseconds per call: best of 5 repeats sized to about ``budget`` seconds in all."""
    timer = timeit.Timer(function)
    number, elapsed = timer.autorange()
    number = max(1, int(number * budget / 5 / max(elapsed, 1e-9)))
    return min(timer.repeat(5, number)) / number * 1e6


def measure(budget: float) -> dict[str, dict[str, float]]:
    message = chat_event()
    wire = bytes(message)
    upb_class = message_factory.GetMessageClass(
        load_descriptor_pool().FindMessageTypeByName("daveloper.v1.ChatResponse")
    )
    upb_message = upb_class.FromString(wire)
    assert upb_message.SerializeToString() == wire, "both libraries must produce the same bytes"
    as_json = message.to_json()
    assert json.loads(as_json) == json.loads(json_format.MessageToJson(upb_message))

    return {
        "encode (binary)": {
            "betterproto2": per_call_us(lambda: bytes(message), budget),
            "protobuf upb": per_call_us(upb_message.SerializeToString, budget),
        },
        "decode (binary)": {
            "betterproto2": per_call_us(lambda: ChatResponse.parse(wire), budget),
            "protobuf upb": per_call_us(lambda: upb_class.FromString(wire), budget),
        },
        "to JSON": {
            "betterproto2": per_call_us(message.to_json, budget),
            "protobuf upb": per_call_us(lambda: json_format.MessageToJson(upb_message), budget),
        },
        "from JSON": {
            "betterproto2": per_call_us(lambda: ChatResponse.from_json(as_json), budget),
            "protobuf upb": per_call_us(lambda: json_format.Parse(as_json, upb_class()), budget),
        },
        "size": {"bytes": float(len(wire)), "json bytes": float(len(as_json.encode()))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a second or so")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    results = measure(0.05 if args.quick else 1.0)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    size = results.pop("size")
    print(f"ChatResponse(token_delta): {size['bytes']:.0f} bytes on the wire, {size['json bytes']:.0f} bytes as JSON")
    rows = [
        [name, f"{r['betterproto2']:.2f}", f"{r['protobuf upb']:.2f}", f"{r['betterproto2'] / r['protobuf upb']:.0f}x"]
        for name, r in results.items()
    ]
    print(table(["operation", "betterproto2 µs", "protobuf upb µs", "ratio (betterproto2/upb)"], rows))


if __name__ == "__main__":
    main()
