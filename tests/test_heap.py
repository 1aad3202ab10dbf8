"""The serving process's collector settings (daveloper.infra.heap), in a fresh interpreter each."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
from daveloper.infra.heap import YOUNG_THRESHOLD, tune_collector

class Node:
    pass

before = Node()  # alive at start-up: frozen
frozen = tune_collector()
after = Node()
after.self = after  # a cycle made while serving
del after
collected = gc.collect()
print(json.dumps({"frozen": frozen, "threshold": gc.get_threshold(), "young": YOUNG_THRESHOLD,
                  "collected": collected, "tracked": any(o is before for o in gc.get_objects())}))
"""


def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    probe = json.loads(result.stdout)
    assert probe["frozen"] > 1_000
    assert probe["threshold"][0] == probe["young"] > 700
    assert probe["tracked"] is False  # in the permanent generation: no collection visits it
    assert probe["collected"] >= 1  # the cycle made after
