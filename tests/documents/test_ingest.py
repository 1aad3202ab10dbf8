"""Ingestion's event encoding: progress events written directly are the bytes betterproto2 would write."""

from __future__ import annotations

import datetime

import pytest

from daveloper.documents.ingest import progress_event
from generated.daveloper.v1 import IngestEvent, IngestProgress, IngestStage


@pytest.mark.parametrize("stage", list(IngestStage))
@pytest.mark.parametrize(("done", "total"), [(0, 0), (1, 1), (127, 128), (300, 2**40), (2**63, 2**64 - 1)])
@pytest.mark.parametrize("time_ns", [0, 1_700_000_000_000_000_000, 1_700_000_000_123_456_789, 999])
def test_progress_events_are_the_bytes_betterproto_writes(stage: IngestStage, done: int, total: int,
                                                          time_ns: int) -> None:
    ingestion_id = "ing_" + "ab" * 12
    when = datetime.datetime.fromtimestamp(time_ns // 10**9, datetime.UTC).replace(
        microsecond=time_ns % 10**9 // 1000)
    expected = IngestEvent(ingestion_id=ingestion_id, create_time=when,
                           progress=IngestProgress(stage=stage, done=done, total=total))
    # betterproto2 keeps microseconds; compare at that precision.
    written = progress_event(ingestion_id, time_ns // 1000 * 1000, stage, done, total)
    assert written == bytes(expected)
    assert IngestEvent.parse(written) == expected
