"""What it costs to build, encode and decode a typical chat event.

Compares betterproto2 0.10 (the generated dataclasses every servicer uses) with
Google's ``protobuf`` (upb, C; classes built from ``generated/descriptors.binpb``)
on the very same message and wire bytes: construction, binary encode/decode, and
dict/JSON conversion (what the WebSocket edge will need). Then what each stream
pays to send an event the event log stored: decode it and encode its response
again, or wrap the stored bytes (``daveloper.rpc.encoded.wrap_event``, what the
servicers do). Each figure is the best of 5 timed repeats.

Run from the repository root (either form works)::

    .venv/bin/python scripts/bench/codec.py [--quick] [--json]
    .venv/bin/python -m scripts.bench.codec [--quick] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import datetime
import json
import platform
import timeit
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from google.protobuf import json_format, message_factory

from daveloper.descriptors import load_descriptor_pool
from daveloper.rpc.encoded import wrap_event
from generated.daveloper.v1 import ChatEvent, ChatResponse, TokenDelta
from scripts.bench._stats import table

SEQ = 1234
CONVERSATION_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TURN_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
CREATE_TIME = datetime.datetime(2026, 11, 28, 12, 30, 15, 123456, tzinfo=datetime.UTC)
TEXT = " the function return"  # 20 characters: one coalesced token delta


def betterproto2_event() -> ChatResponse:
    return ChatResponse(event=ChatEvent(seq=SEQ, conversation_id=CONVERSATION_ID, turn_id=TURN_ID,
                                        create_time=CREATE_TIME, token_delta=TokenDelta(text=TEXT)))


def _with_seq(event: ChatEvent) -> ChatEvent:
    event.seq = SEQ
    return event


def _upb_response(response_class: Any, stored: bytes) -> bytes:
    response = response_class()
    response.event.MergeFromString(stored)
    response.event.seq = SEQ
    return response.SerializeToString()  # type: ignore[no-any-return]


def per_call_us(function: Callable[[], Any], budget: float) -> float:
    """Microseconds per call: the best of 5 repeats, sized to about ``budget`` seconds in all."""
    timer = timeit.Timer(function)
    calibration = 20
    elapsed = timer.timeit(calibration)
    number = max(1, int(calibration * budget / 5 / max(elapsed, 1e-9)))
    return min(timer.repeat(5, number)) / number * 1e6


def measure(budget: float) -> dict[str, dict[str, float]]:
    message = betterproto2_event()
    wire = bytes(message)
    upb_class = message_factory.GetMessageClass(
        load_descriptor_pool().FindMessageTypeByName("daveloper.v1.ChatResponse")
    )

    def upb_event() -> Any:
        return upb_class(event={"seq": SEQ, "conversation_id": CONVERSATION_ID, "turn_id": TURN_ID,
                                "create_time": CREATE_TIME, "token_delta": {"text": TEXT}})

    upb_message = upb_event()
    assert upb_message.SerializeToString() == wire, "both libraries must produce the same bytes"
    stored = bytes(ChatEvent(conversation_id=CONVERSATION_ID, turn_id=TURN_ID, create_time=CREATE_TIME,
                             token_delta=TokenDelta(text=TEXT)))  # as appended: no seq
    assert wrap_event(stored, SEQ) == _upb_response(upb_class, stored) == wire
    assert ChatResponse.parse(wire) == message
    as_dict = message.to_dict()
    as_json = message.to_json()
    assert as_dict == json_format.MessageToDict(upb_message)
    assert json.loads(as_json) == json.loads(json_format.MessageToJson(upb_message, indent=None))
    assert ChatResponse.from_json(as_json) == message

    return {
        "construct": {
            "betterproto2": per_call_us(betterproto2_event, budget),
            "protobuf upb": per_call_us(upb_event, budget),
        },
        "encode (binary)": {
            "betterproto2": per_call_us(lambda: bytes(message), budget),
            "protobuf upb": per_call_us(upb_message.SerializeToString, budget),
        },
        "decode (binary)": {
            "betterproto2": per_call_us(lambda: ChatResponse.parse(wire), budget),
            "protobuf upb": per_call_us(lambda: upb_class.FromString(wire), budget),
        },
        "to dict": {
            "betterproto2": per_call_us(message.to_dict, budget),
            "protobuf upb": per_call_us(lambda: json_format.MessageToDict(upb_message), budget),
        },
        "to JSON": {
            "betterproto2": per_call_us(message.to_json, budget),
            "protobuf upb": per_call_us(lambda: json_format.MessageToJson(upb_message, indent=None), budget),
        },
        "from dict": {
            "betterproto2": per_call_us(lambda: ChatResponse.from_dict(as_dict), budget),
            "protobuf upb": per_call_us(lambda: json_format.ParseDict(as_dict, upb_class()), budget),
        },
        "from JSON": {
            "betterproto2": per_call_us(lambda: ChatResponse.from_json(as_json), budget),
            "protobuf upb": per_call_us(lambda: json_format.Parse(as_json, upb_class()), budget),
        },
        # What each stream pays to send an event the log stored (serialized, seq beside it):
        # decode it and encode its response again, or wrap the stored bytes (daveloper.rpc.encoded).
        "stored event → response": {
            "betterproto2": per_call_us(lambda: bytes(ChatResponse(event=_with_seq(ChatEvent.parse(stored)))), budget),
            "protobuf upb": per_call_us(lambda: _upb_response(upb_class, stored), budget),
            "pass-through": per_call_us(lambda: wrap_event(stored, SEQ), budget),
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
    stored = results.pop("stored event → response")
    print(f"python {platform.python_version()}, betterproto2 {version('betterproto2')}, "
          f"protobuf {version('protobuf')}; best of 5 repeats")
    print(f"ChatResponse(event=ChatEvent(token_delta)): {size['bytes']:.0f} bytes on the wire, "
          f"{size['json bytes']:.0f} bytes as JSON")
    rows = [
        [name, f"{r['betterproto2']:.2f}", f"{r['protobuf upb']:.2f}", f"{r['betterproto2'] / r['protobuf upb']:.1f}"]
        for name, r in results.items()
    ]
    print(table(["operation", "betterproto2 µs", "protobuf upb µs", "ratio betterproto2/upb"], rows))
    print("\nA stored event (serialized at append, no seq) sent on a stream, per stream:")
    print(table(["decode + re-encode, betterproto2 µs", "decode + re-encode, upb µs", "wrap_event µs",
                 "ratio betterproto2/wrap"],
                [[f"{stored['betterproto2']:.2f}", f"{stored['protobuf upb']:.2f}", f"{stored['pass-through']:.2f}",
                  f"{stored['betterproto2'] / stored['pass-through']:.0f}"]]))


if __name__ == "__main__":
    main()
