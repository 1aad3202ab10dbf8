"""TurnAdmission: refusals past either limit, with RetryInfo's delay; each turn counted down once."""

from __future__ import annotations

import pytest

from daveloper.agent.admission import TurnAdmission
from daveloper.agent.running import RunningTurn
from daveloper.errors import Unavailable
from generated.daveloper.v1 import ChatOptions, Turn


def admitted() -> RunningTurn:
    return RunningTurn("s", "c", Turn(id="t"), ChatOptions(), starting=True, counted=True)


def test_starting_limit_refuses_until_a_turn_has_started() -> None:
    admission = TurnAdmission(max_running=10, max_starting=1, retry_seconds=0.5)
    admission.admit()
    turn = admitted()
    with pytest.raises(Unavailable) as refused:
        admission.admit()
    assert (refused.value.reason, refused.value.retry_after) == ("TURNS_SATURATED", 0.5)
    admission.started(turn)
    admission.started(turn)  # once per turn
    assert (admission.running, admission.starting) == (1, 0)
    admission.admit()


def test_running_limit_refuses_until_a_turn_has_ended() -> None:
    admission = TurnAdmission(max_running=1, max_starting=0, retry_seconds=1.0)
    admission.admit()
    turn = admitted()
    admission.started(turn)
    with pytest.raises(Unavailable):
        admission.check()
    admission.ended(turn)
    admission.ended(turn)  # once per turn
    assert (admission.running, admission.starting) == (0, 0)
    admission.check()


def test_a_withdrawn_admission_frees_both_counts() -> None:
    admission = TurnAdmission(max_running=1, max_starting=1, retry_seconds=1.0)
    admission.admit()
    admission.withdraw()
    assert (admission.running, admission.starting) == (0, 0)
    admission.admit()
