"""Test-only fault injection: the worker kills itself at a named checkpoint phase.

`EOS_FAULT=after_persist@3` SIGKILLs the process the 3rd time it reaches the phase
`after_persist` (the count defaults to 1). Chaos tests use this to crash the worker
deterministically at every step of a checkpoint; unset, the hooks cost one dict lookup
per phase per checkpoint.

The sink phases count only checkpoints in which a transactional sink had writes, the
changelog phase only checkpoints in which a task logged its changes.

`EOS_FAULT=after_persist@3:stop` freezes the process there instead (SIGSTOP to itself):
a test resumes it with SIGCONT once the group has moved on, to check that a zombie
caught just before its commit cannot commit. `:fail-consumer` makes the consumer report
a fatal error at its next poll, as librdkafka does for a static member it fenced with
its own rejoin.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

PHASES = (
    "after_barrier",
    "after_prepare",
    "after_flush",
    "after_snapshot",
    "mid_manifest",
    "after_persist",
    "after_commit",
    "after_kafka_commit",
)
# Reached only by checkpoints in which a transactional sink (connectors/two_phase.py) has
# writes to prepare: after they prepared (at the barrier), and between the Kafka commit
# and theirs.
SINK_PHASES = ("after_prepare", "after_kafka_commit")
# Reached only by checkpoints in which a task logged its changes to the changelog instead
# of a snapshot (--snapshot-interval): after they went into the transaction, before its commit.
CHANGELOG_PHASES = ("after_changelog",)


class FaultInjector:
    def __init__(self, spec: str | None = None) -> None:
        spec = spec if spec is not None else os.environ.get("EOS_FAULT", "")
        self.phase: str | None = None
        self.at = 1
        self.action = "kill"
        self._hits = 0
        # What `fail-consumer` calls (the worker points it at its source).
        self.fail_consumer: Callable[[str], None] = lambda reason: None
        if spec:
            spec, _, action = spec.partition(":")
            phase, _, count = spec.partition("@")
            if phase not in PHASES + CHANGELOG_PHASES:
                raise ValueError(f"EOS_FAULT phase {phase!r} is not one of {', '.join(PHASES + CHANGELOG_PHASES)}")
            if action not in ("", "kill", "stop", "fail-consumer"):
                raise ValueError(f"EOS_FAULT action {action!r} is not kill, stop or fail-consumer")
            self.phase = phase
            self.at = int(count or 1)
            self.action = action or "kill"

    def hit(self, phase: str, before_kill: Callable[[], None] | None = None) -> None:
        if phase != self.phase:
            return
        self._hits += 1
        if self._hits == self.at and self.action == "stop":
            log.warning("fault injection: freezing this worker at %s (#%d)", phase, self._hits)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGSTOP)
            log.warning("fault injection: resumed at %s", phase)
        elif self._hits == self.at and self.action == "fail-consumer":
            log.warning("fault injection: failing the consumer at %s (#%d)", phase, self._hits)
            self.fail_consumer(f"fault injection at {phase}: the consumer is fenced")
        elif self._hits >= self.at and self.action == "kill":
            log.warning("fault injection: killing this worker at %s (#%d)", phase, self._hits)
            if before_kill is not None:
                before_kill()
            os.kill(os.getpid(), signal.SIGKILL)
