"""What a Kafka client's error means for this worker, by error code alone.

This is the one place that tells fencing from a rebalance from a lost call. librdkafka
reports the same condition through different calls (a fatal producer answers every
transactional call with the error that made it fatal, `produce()` with a bare `_FATAL`),
so callers classify the error they hold and never read its message.
"""

from __future__ import annotations

import enum

from confluent_kafka import KafkaError, KafkaException


class Cause(enum.Enum):
    FENCED = "fenced"                   # another instance took this transactional id or group instance id
    MEMBER_GONE = "member gone"         # the group no longer knows this member: its session expired
    GROUP_MOVED = "group moved"         # the group rebalanced under the call (KIP-447's zombie fence)
    UNKNOWN_OUTCOME = "unknown outcome" # the call timed out: whether it took effect is unknown (no KIP-890)
    REFUSED = "refused"                 # authorisation or configuration: no new client can do better
    ABORTABLE = "abortable"             # the transaction must be aborted; nothing else is wrong
    RETRIABLE = "retriable"             # the same call may simply be tried again
    CLIENT_FATAL = "client fatal"       # this client instance is unusable; a new one may work
    FAILED = "failed"                   # anything else


_BY_CODE = {
    KafkaError._FENCED: Cause.FENCED,
    KafkaError.PRODUCER_FENCED: Cause.FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH: Cause.FENCED,
    KafkaError.FENCED_INSTANCE_ID: Cause.FENCED,
    KafkaError.UNKNOWN_MEMBER_ID: Cause.MEMBER_GONE,
    KafkaError.ILLEGAL_GENERATION: Cause.GROUP_MOVED,
    KafkaError.REBALANCE_IN_PROGRESS: Cause.GROUP_MOVED,
    KafkaError._TIMED_OUT: Cause.UNKNOWN_OUTCOME,
    # Leadership moved (a broker restarted): the client's metadata is stale; ask again.
    KafkaError.FENCED_LEADER_EPOCH: Cause.RETRIABLE,
    KafkaError.UNKNOWN_LEADER_EPOCH: Cause.RETRIABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION: Cause.RETRIABLE,
    KafkaError.LEADER_NOT_AVAILABLE: Cause.RETRIABLE,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: Cause.REFUSED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: Cause.REFUSED,
    KafkaError.GROUP_AUTHORIZATION_FAILED: Cause.REFUSED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED: Cause.REFUSED,
    KafkaError.INVALID_TRANSACTION_TIMEOUT: Cause.REFUSED,
    KafkaError.SASL_AUTHENTICATION_FAILED: Cause.REFUSED,
    KafkaError._AUTHENTICATION: Cause.REFUSED,
}

# A client whose identity may have been taken over: ask the group before acting for it.
IDENTITY_IN_DOUBT = {Cause.FENCED, Cause.MEMBER_GONE}
# A consumer turned fatal reports a bare `_FATAL` with no way to read the cause; the
# fatal error librdkafka's consumer knows is a static member's instance id taken over.
CONSUMER_IDENTITY_IN_DOUBT = IDENTITY_IN_DOUBT | {Cause.CLIENT_FATAL}


def error_of(exc: BaseException) -> KafkaError:
    """The KafkaError a client exception carries (a bare one becomes `_FAIL`)."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err if isinstance(err, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def cause_of(err: KafkaError) -> Cause:
    cause = _BY_CODE.get(err.code())
    if cause is not None:
        return cause
    if err.txn_requires_abort():
        return Cause.ABORTABLE
    if err.retriable():
        return Cause.RETRIABLE
    if err.fatal() or err.code() == KafkaError._FATAL:
        return Cause.CLIENT_FATAL
    return Cause.FAILED


def describe(err: KafkaError) -> str:
    return f"{err.name()}: {err.str()}"
