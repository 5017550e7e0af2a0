"""What happens to a record that cannot be processed.

`fail` (the default) stops the worker: the transaction aborts, so nothing past the last
completed checkpoint is committed. `dead-letter` writes the original record, untouched,
to the job's dead-letter topic inside the same transaction, with headers that say where
it came from and why it failed: it is exactly-once like any output. `skip-and-log` logs
the error and goes on; it must be chosen explicitly because it loses the record.
"""

from __future__ import annotations

import logging
from typing import Any

from connectors.dead_letter import DeadLetterSink, dead_letter_topic, failure_headers
from connectors.kafka_sink import Produce
from eos.errors import ConfigurationError, RecordError

log = logging.getLogger(__name__)

FAIL, DEAD_LETTER, SKIP = "fail", "dead-letter", "skip-and-log"
POLICIES = (FAIL, DEAD_LETTER, SKIP)
__all__ = ["ErrorHandler", "POLICIES", "dead_letter_topic"]


class ErrorHandler:
    """Applies the policy of the operator that failed (or the job's default)."""

    def __init__(self, default: str, overrides: dict[str, str], dlq_topic: str | None,
                 on_dead_letter: Any = None) -> None:
        if default not in POLICIES:
            raise ConfigurationError(f"--error-policy {default!r} is not one of {', '.join(POLICIES)}")
        self.default = default
        self.overrides = overrides
        self.dlq_topic = dlq_topic
        self._dead_letters = DeadLetterSink(dlq_topic) if dlq_topic else None
        self._on_dead_letter = on_dead_letter or (lambda: None)

    @property
    def uses_dead_letter(self) -> bool:
        return self.default == DEAD_LETTER or DEAD_LETTER in self.overrides.values()

    def policy_for(self, operator: str | None) -> str:
        return self.overrides.get(operator or "", self.default)

    def handle(self, error: RecordError, msg: Any, produce: Produce) -> None:
        """Raises `error` under `fail`; otherwise disposes of the record and returns."""
        policy = self.policy_for(error.operator)
        if policy == FAIL:
            raise error
        if policy == SKIP:
            log.warning("skipping record: %s", error)
            return
        if self._dead_letters is None:
            raise ConfigurationError(f"policy {DEAD_LETTER!r} needs a dead-letter topic") from error
        headers = failure_headers(error.topic, error.partition, error.offset, error.operator,
                                  type(error.cause or error).__name__, error.reason)
        self._dead_letters.send(produce, msg, headers)
        self._on_dead_letter()
        log.info("dead-lettered %s", error)
