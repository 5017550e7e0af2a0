"""Checks and creates the topics a job needs before any record is read.

Input and output topics belong to the user and must exist. Repartition topics belong
to the job: they are created with the partition count of the job's source topic (or
the count given to `key_by`), and an existing one with another count is an error,
because keys would land on other partitions than their state.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, TopicMetadata

from connectors.changelog import TOPIC_CONFIG as CHANGELOG_CONFIG
from connectors.changelog import changelog_topic
from connectors.reading import open_reader, read_available
from eos.errors import ConfigurationError
from service.job.planner import Plan
from statestore.murmur2 import partition_for

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0


def _admin(config: dict[str, object]) -> tuple[AdminClient, list[str]]:
    """An admin client that remembers what librdkafka reported (e.g. a failed SASL
    handshake), so a failure can say why, not just that the transport failed."""
    reported: list[str] = []
    admin = AdminClient({**config, "error_cb": lambda err: reported.append(err.str())})
    return admin, reported


def _partition_counts(admin: AdminClient, topics: list[str], reported: list[str],
                      bootstrap: object) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        admin.poll(0)  # serves error_cb with what went wrong underneath
        cause = reported[-1] if reported else exc.args[0].str()
        raise ConfigurationError(
            f"cannot read the cluster's metadata from {bootstrap}: {cause}. Check the bootstrap "
            "address and the security settings (--kafka-config / --kafka-config-file)") from None
    counts = {}
    for name in topics:
        info = metadata.topics.get(name)
        if info is not None and info.error is None:
            counts[name] = len(info.partitions)
    return counts


def ensure_topics(plan: Plan, admin_config: dict[str, object],
                  dead_letter_topic: str | None = None, changelogs: bool = False) -> dict[str, int]:
    """Returns the partition count of every topic the job reads or writes. The
    dead-letter topic, when the job uses one, is created like a repartition topic; with
    `changelogs`, each stateful stage's changelog topic like its input."""
    admin, reported = _admin(admin_config)
    repartition = plan.repartition_inputs
    external = [i.topic for s in plan.stages for i in s.inputs if not i.repartition] + plan.sink_topics
    external += [t.options["topic"] for t in plan.global_tables]
    changelog_of = {changelog_topic(plan.group, s.id): s for s in plan.stages if s.stateful_uids} if changelogs else {}
    owned = [i.topic for i in repartition] + ([dead_letter_topic] if dead_letter_topic else []) + list(changelog_of)
    counts = _partition_counts(admin, external + owned, reported, admin_config.get("bootstrap.servers"))
    missing = [t for t in external if t not in counts]
    if missing:
        raise ConfigurationError(
            f"job {plan.job.name!r} needs topic(s) {', '.join(sorted(set(missing)))}, which do not exist "
            "on the cluster; create them first (input and output topics are not created automatically)")
    to_create = []
    for stage_input in repartition:
        wanted = stage_input.partitions or counts[stage_input.partitions_like or stage_input.origin_topic]
        have = counts.get(stage_input.topic)
        if have is None:
            to_create.append(NewTopic(stage_input.topic, num_partitions=wanted, replication_factor=-1))
            counts[stage_input.topic] = wanted
        elif (stage_input.partitions is not None or stage_input.partitions_like is not None) and have != wanted:
            raise ConfigurationError(
                f"repartition topic {stage_input.topic!r} has {have} partitions but {stage_input.root.kind} "
                f"{stage_input.root.uid!r} asks for {wanted}; keys would move away from their state. Restore from "
                "a savepoint into a new group to change it.")
    check_co_partitioned(plan, counts)
    if dead_letter_topic and dead_letter_topic not in counts:
        wanted = counts[plan.stages[0].topic]
        to_create.append(NewTopic(dead_letter_topic, num_partitions=wanted, replication_factor=-1))
        counts[dead_letter_topic] = wanted
    for name, stage in changelog_of.items():
        wanted = counts[stage.topic]
        have = counts.get(name)
        if have is None:
            to_create.append(NewTopic(name, num_partitions=wanted, replication_factor=-1, config=CHANGELOG_CONFIG))
            counts[name] = wanted
        elif have != wanted:
            raise ConfigurationError(
                f"changelog topic {name!r} has {have} partitions but stage {stage.id!r} reads {wanted}; each task "
                "logs its state changes to its own partition")
    create_topics(admin, to_create)
    return counts


def create_topics(admin: AdminClient, topics: list[NewTopic]) -> None:
    """Creates `topics` (one that exists already is left as it is) and returns once the
    cluster lists each of them."""
    if not topics:
        return
    partitions = {t.topic: t.num_partitions for t in topics}
    for name, future in admin.create_topics(topics, operation_timeout=TIMEOUT_S).items():
        try:
            future.result(timeout=TIMEOUT_S)
            log.info("created topic %s (%d partitions)", name, partitions[name])
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigurationError(f"cannot create topic {name!r}: {exc}") from exc
    _wait_visible(admin, list(partitions))


def _wait_visible(admin: AdminClient, topics: list[str]) -> None:
    """Until the cluster's metadata lists every created topic with a leader for each
    partition. Created is not yet visible: a client that looks before then is told the
    topic does not exist (a worker refuses to start; a consumer that subscribed looks
    again only at its next metadata refresh, minutes later)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        metadata = admin.list_topics(timeout=TIMEOUT_S)
        pending = [name for name in topics if not _ready(metadata.topics.get(name))]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ConfigurationError(f"created topic(s) {', '.join(pending)}, but the cluster did not list them "
                                     f"with a leader for every partition within {TIMEOUT_S:g}s")
        time.sleep(0.1)


def _ready(info: TopicMetadata | None) -> bool:
    return (info is not None and info.error is None and bool(info.partitions)
            and all(p.leader >= 0 for p in info.partitions.values()))


def check_co_partitioned(plan: Plan, counts: dict[str, int]) -> None:
    """The inputs of a stage meet partition by partition, so they need the same count
    (keys hashed alike is the producers' part: murmur2 of the key bytes, as Kafka's Java
    client and librdkafka's murmur2_random partitioner do)."""
    for stage in plan.stages:
        if len(stage.inputs) < 2:
            continue
        have = {i.topic: counts[i.topic] for i in stage.inputs}
        if len(set(have.values())) > 1:
            raise ConfigurationError(
                f"stage {stage.id!r} reads {', '.join(f'{t} ({n} partitions)' for t, n in have.items())} "
                "together, partition by partition, so they must have the same number of partitions; "
                "repartition one side with key_by, or give the topics the same partitions")


# Records sampled per partition when checking that a topic's keys are placed as Kafka's
# Java client places them.
SAMPLED_PER_PARTITION = 3


def check_key_partitioning(plan: Plan, consumer_config: dict[str, object], counts: dict[str, int],
                           timeout_s: float = 10.0) -> None:
    """Inputs that meet in a task must place each key on the partition Kafka's Java
    client does (murmur2 of the key bytes): a topic written with librdkafka's default
    partitioner (CRC32) would send a user's clicks and profile to different tasks, which
    would then never meet. The first records of each partition are checked."""
    topics = sorted({i.topic for s in plan.stages if len(s.inputs) > 1 for i in s.inputs if not i.repartition})
    if not topics:
        return
    consumer = open_reader(consumer_config, "eos-partitioning-check",
                           [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(counts[t])])
    try:
        pending = {(t, p): SAMPLED_PER_PARTITION for t in topics for p in range(counts[t])}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in read_available(consumer, 500, 0.5):
                key = (msg.topic(), msg.partition())
                if key not in pending:
                    continue
                if msg.error() is not None:
                    pending.pop(key, None)  # the end, or nothing readable: nothing to judge
                    continue
                if msg.key() is not None:
                    expected = partition_for(msg.key(), counts[msg.topic()])
                    if expected != msg.partition():
                        raise ConfigurationError(
                            f"topic {msg.topic()!r} partition {msg.partition()} offset {msg.offset()} holds key "
                            f"{msg.key()!r}, which Kafka's Java client places in partition {expected}: the topic's "
                            "keys are not partitioned by murmur2, so its records would not meet their partners in "
                            "the join. Produce it with Kafka's default partitioner (librdkafka: "
                            "partitioner=murmur2_random), or key_by it in the job.")
                pending[key] -= 1
                if not pending[key]:
                    del pending[key]
    finally:
        consumer.close()


class PartitionCounts:
    """Current partition counts, asked of the cluster through a client of its own: the
    consumer's metadata call must not run inside the consumer's rebalance callbacks
    (confluent-kafka keeps one call state per client, and a nested call clears it)."""

    def __init__(self, admin_config: dict[str, object]) -> None:
        self._admin = AdminClient(admin_config)

    def of(self, topics: set[str]) -> dict[str, int | None]:
        """Partitions per topic; None where the cluster did not say (not checked then)."""
        try:
            metadata = self._admin.list_topics(timeout=TIMEOUT_S)
        except KafkaException as exc:
            log.warning("cannot read partition counts of %s: %s", ", ".join(sorted(topics)), exc)
            return dict.fromkeys(topics)
        counts: dict[str, int | None] = {}
        for topic in topics:
            info = metadata.topics.get(topic)
            counts[topic] = len(info.partitions) if info is not None and info.error is None else None
        return counts
