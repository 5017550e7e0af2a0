"""The loop gives up tasks whose partitions were revoked or lost (service/runtime/loop.py,
`_release`) with its collaborators at the seams it owns. A checkpoint in flight covers
those tasks, and its background part reads them (their state, their retention) until it
ends: it must end before they are released. A zombie woken past its session timeout hit
that as a KeyError from the background thread instead of stopping as replaced."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from connectors.transactions import Kind, Outcome
from eos.errors import WorkerReplacedError
from service.runtime.loop import ProcessingLoop


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []


def _loop(recorder: Recorder, abort: Outcome) -> ProcessingLoop:
    loop = ProcessingLoop.__new__(ProcessingLoop)  # only what `_release` and `settle` use
    loop.owner = SimpleNamespace(abort=lambda reason, **_: recorder.calls.append("abort") or abort)
    loop.manager = SimpleNamespace(changed=lambda keys=None: True,
                                   release=lambda keys: recorder.calls.append("release"),
                                   rewind_all=lambda: recorder.calls.append("rewind"))
    loop.coordinator = SimpleNamespace(in_flight=True, settle_in_flight=lambda: recorder.calls.append("settle"))
    loop.monitor = SimpleNamespace(note_error=lambda reason: None)
    loop.failures, loop.tolerable_failures = 0, 3
    return loop


@pytest.mark.parametrize("lost", [True, False])
def test_the_checkpoint_in_flight_ends_before_the_tasks_it_covers_are_released(lost):
    recorder = Recorder()
    _loop(recorder, Outcome(Kind.REWIND, "gone"))._release((("orders", 0),), lost)
    assert recorder.calls.index("settle") < recorder.calls.index("release"), recorder.calls


def test_a_worker_replaced_while_its_checkpoint_was_in_flight_stops_as_replaced():
    recorder = Recorder()
    with pytest.raises(WorkerReplacedError):
        _loop(recorder, Outcome(Kind.REPLACED, "a newer process holds the slot"))._release((("orders", 0),), True)
    assert recorder.calls[:2] == ["abort", "settle"], recorder.calls
