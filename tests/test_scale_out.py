"""Scale-out: several workers of one job in one consumer group, sharing checkpoint
storage, proven by starting, killing, stopping, freezing and adding real worker
processes and checking the committed output with the independent oracle."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from eos.errors import ConfigurationError
from service.job.api import Job
from service.job.planner import plan, repartition_topic
from service.membership.slot import transactional_id
from service.runtime.topics import ensure_topics
from tests.harness.kafka import create_topics, group_assignment, group_members, unique_name
from tests.harness.savepoints import start_controlled
from tests.harness.scenario import RunningSum
from tests.harness.worker_pool import WorkerPool, run_chaos
from tests.harness.worker_process import REPO, wait_for

pytestmark = pytest.mark.kafka

PREKEYED_JOB = REPO / "examples" / "running_sum_prekeyed.py"
VARIANTS = {
    # input keyed by order id, re-keyed by user through the repartition topic
    "two-stage": dict(key_by_user=False, spec={}),
    # input keyed by user, state keyed by the record key: one stage
    "one-stage": dict(key_by_user=True, spec={"job": PREKEYED_JOB}),
    # with dynamic membership: a restarted worker waits for its old membership to expire
    "two-stage-dynamic": dict(key_by_user=False, spec={"membership": "--dynamic-membership"}),
}


@contextmanager
def _stopped_at_end(pool: WorkerPool) -> Iterator[WorkerPool]:
    """Stops every worker gracefully when the block succeeds, kills them when it fails."""
    try:
        yield pool
        pool.stop_all()
    finally:
        pool.kill_all()


def _assert_exactly_once(scenario: RunningSum) -> None:
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == scenario.records, report.summary()


def _chaos(bootstrap, tmp_path, variant: str, records: int, events: int, seed: int) -> None:
    spec = VARIANTS[variant]["spec"]
    scenario = RunningSum(bootstrap, tmp_path, records=records, chunk=400, chunk_pause_s=0.8,
                          key_by_user=VARIANTS[variant]["key_by_user"])
    pool = WorkerPool(scenario, spec=spec)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        for _ in range(3):
            pool.start()
        history = run_chaos(pool, events=events, seed=seed)
        scenario.wait_fed()
        pool.ensure_live(3)
        scenario.wait_complete(None, timeout=300)
    report = scenario.check()
    assert report.ok, report.summary() + "\n" + "\n".join(history)
    assert report.outputs == records, report.summary()


def test_workers_joining_leaving_and_crashing_at_random_lose_and_duplicate_nothing(bootstrap, tmp_path):
    _chaos(bootstrap, tmp_path, "two-stage", records=16_000, events=30, seed=8)


@pytest.mark.chaos
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed", [81, 82])
def test_long_multi_worker_chaos(bootstrap, tmp_path, variant, seed):
    _chaos(bootstrap, tmp_path, variant, records=40_000, events=80, seed=seed)


def _wait_frozen(pool: WorkerPool, name: str) -> None:
    process = pool.slots[name].process
    wait_for(lambda: "fault injection: freezing" in process.log_text() or not process.alive(), 120, 0.2,
             f"worker {name} to freeze")
    assert process.alive(), process.log_tail()


def test_frozen_worker_loses_its_partitions_and_is_fenced_when_it_resumes(bootstrap, tmp_path):
    """Frozen just before its commit, past its session timeout: the others take its
    partitions over and end its open transaction; woken up, it commits nothing of that
    epoch. Nobody else holds its slot, so it initialises again and rejoins the group."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    pool = WorkerPool(scenario)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        zombie = pool.start("zombie", fault="after_persist@4:stop").process
        pool.start("w1")
        pool.start("w2")
        _wait_frozen(pool, "zombie")
        wait_for(lambda: "zombie" not in group_members(bootstrap, scenario.group), 60, 0.5,
                 "the frozen worker to drop out of the group")
        scenario.wait_fed()
        scenario.wait_complete(None, timeout=180)
        outputs_before = len(scenario.outputs())

        zombie.signal(signal.SIGCONT)
        wait_for(lambda: "the worker slot's register lists no newer process" in zombie.log_text()
                 or not zombie.alive(), 60, 0.5, lambda: f"the resumed worker to find its slot its own\n"
                                                        f"{zombie.log_tail()}")
        wait_for(lambda: "zombie" in group_members(bootstrap, scenario.group) or not zombie.alive(), 60, 0.5,
                 "the resumed worker to rejoin")
        log = zombie.log_text()
        assert "fault injection: resumed at after_persist" in log, log
    assert "worker zombie left the group: ended its open transaction" in pool.log_texts()
    report = scenario.check()
    assert report.ok, report.summary()
    assert report.outputs == outputs_before == scenario.records, report.summary()


def test_worker_fenced_by_a_peer_while_live_resumes_from_its_checkpoint(bootstrap, tmp_path):
    """A peer that saw this worker missing from the group (every session expires in a
    broker restart, and members rejoin one by one) ends its transaction as it would a
    dead worker's. The worker, not replaced, initialises again and redoes its work."""
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, chunk=400, chunk_pause_s=0.4)
    pool = WorkerPool(scenario)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        worker = pool.start("w1").process
        wait_for(lambda: "assigned" in worker.log_text(), 60, 0.2, "w1 to get partitions")
        time.sleep(2)  # mid-run, with a transaction open
        peer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id(scenario.group, "w1")})
        peer.init_transactions(30)
        del peer  # as DepartedWorkerFencer does: it only ends the transaction
        scenario.wait_fed()
        scenario.wait_complete(worker, timeout=180)
        assert "the worker slot's register lists no newer process" in worker.log_text(), worker.log_text()
    _assert_exactly_once(scenario)


def test_frozen_worker_left_unfenced_rejoins_without_committing(bootstrap, tmp_path):
    """Without fencing by the others, a worker woken before its transaction times out
    finds its offsets refused (stale group generation, or its instance id's entry taken
    by its own rejoin), aborts, and rejoins the group."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    pool = WorkerPool(scenario, spec={"extra_args": ["--no-fence-departed"]})
    with _stopped_at_end(pool):
        scenario.start_feeding()
        zombie = pool.start("zombie", fault="after_persist@4:stop").process
        pool.start("w1")
        _wait_frozen(pool, "zombie")
        wait_for(lambda: "zombie" not in group_members(bootstrap, scenario.group), 60, 0.5,
                 "the frozen worker to drop out of the group")
        zombie.signal(signal.SIGCONT)
        wait_for(lambda: "zombie" in group_members(bootstrap, scenario.group) or not zombie.alive(), 60, 0.5,
                 "the resumed worker to rejoin")
        scenario.wait_fed()
        scenario.wait_complete(None, timeout=180)
        log = zombie.log_text()
        # A static member (the default) finds its own rejoin under the same instance id
        # fenced the transaction's member; a dynamic one is refused as stale.
        assert re.search(r"checkpoint \d+ not committed: .* refused: (the group (rebalanced meanwhile|no longer "
                         r"knows this member)|this producer was fenced \(FENCED_INSTANCE_ID)", log), log
    _assert_exactly_once(scenario)


@pytest.mark.parametrize("machines", ["one machine", "separate machines"])
@pytest.mark.parametrize("membership", ["static", "dynamic"])
def test_woken_zombie_does_not_take_its_slot_back(bootstrap, tmp_path, machines, membership):
    """Frozen past its session timeout while a replacement of its slot starts, on the
    same machine or on another (state directories that share nothing): woken, it must
    stop (exit 3) rather than take the slot back, by initialising the slot's
    transactional id again or, as a static member, by rejoining under its instance id,
    which the group would grant by retiring the replacement. The slot's register in
    the shared checkpoint storage says which process of the slot started last,
    wherever it runs."""
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, chunk=400, chunk_pause_s=0.4)
    flag = {"membership": f"--{membership}-membership"}
    pool = WorkerPool(scenario, spec=flag)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        pool.start("w2")
        zombie = pool.start("w1").process
        wait_for(lambda: "assigned" in zombie.log_text(), 60, 0.2, "w1 to get partitions")
        zombie.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        state_dir = tmp_path / "other-machine" if machines == "separate machines" else scenario.workdir / "state"
        pool.slots["w1"].process = replacement = scenario.start_worker(worker_id="w1", state_dir=state_dir, **flag)
        wait_for(lambda: "assigned" in replacement.log_text() or not replacement.alive(), 60, 0.2,
                 "the replacement to get partitions")
        # Past the zombie's own session timeout (6 s), librdkafka rejoins when it wakes
        # rather than heartbeat under the member id the replacement retired.
        time.sleep(max(0.0, frozen_at + 8 - time.monotonic()))
        zombie.signal(signal.SIGCONT)
        assert zombie.wait(60) == 3, f"the woken zombie did not stop:\n{zombie.log_text()}"
        assert "worker slot w1 is held by a newer process" in zombie.log_text(), zombie.log_text()
        assert replacement.alive(), f"the zombie fenced its replacement:\n{replacement.log_text()}"
        scenario.wait_fed()
        scenario.wait_complete(replacement, timeout=180)
    _assert_exactly_once(scenario)


def test_a_second_process_with_a_live_worker_id_stops_and_the_first_runs_on(bootstrap, tmp_path):
    """Two processes started with the same --worker-id by mistake (dynamic membership):
    the second sees the first listed in the group past a session timeout, stops with
    exit 5 naming it, and never touches the slot's transactions; restarted by a
    supervisor, it stops again."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    pool = WorkerPool(scenario)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        dynamic = {"membership": "--dynamic-membership"}
        first = pool.start("w1", **dynamic).process
        wait_for(lambda: "assigned" in first.log_text(), 60, 0.2, "w1 to get partitions")
        for attempt in range(2):
            twin = scenario.start_worker(worker_id="w1", state_dir=tmp_path / f"twin-{attempt}", **dynamic)
            assert twin.wait(60) == 5, twin.log_text()
            _assert_names_the_live_process(twin.log_text())
        assert first.alive()
        scenario.wait_fed()
        scenario.wait_complete(first, timeout=180)
        assert "was fenced" not in first.log_text(), first.log_text()
    _assert_exactly_once(scenario)


def test_with_static_membership_a_replaced_process_restarted_by_its_supervisor_stops_instead_of_taking_turns(
        bootstrap, tmp_path):
    """Static members: the later process's join retires the earlier one at the group
    (FENCED_INSTANCE_ID), which stops with exit 3 naming it. A supervisor restarting the
    earlier one finds its record saying it was replaced and the other still alive: it
    stops with exit 5 each time, rather than take the slot back in turn."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    static = {"membership": "--static-membership"}
    pool = WorkerPool(scenario)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        first = pool.start("w1", **static).process
        wait_for(lambda: "assigned" in first.log_text(), 60, 0.2, "w1 to get partitions")
        later = scenario.start_worker(worker_id="w1", state_dir=tmp_path / "elsewhere", **static)
        assert first.wait(60) == 3, first.log_text()
        assert "worker slot w1 is held by a newer process" in first.log_text(), first.log_text()
        for _ in range(2):
            restarted = scenario.start_worker(worker_id="w1", **static)
            assert restarted.wait(60) == 5, restarted.log_text()
            _assert_names_the_live_process(restarted.log_text())
        assert later.alive(), later.log_tail()
        scenario.wait_fed()
        scenario.wait_complete(later, timeout=180)
        assert later.terminate() == 0, later.log_tail()
    _assert_exactly_once(scenario)


def _assert_names_the_live_process(log: str) -> None:
    assert "worker id w1 is already in use by a live process" in log, log
    assert "started" in log.split("already in use", 1)[1], log  # names the other, with its start


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_workers_on_separate_machines_restore_each_others_tasks_from_shared_storage(
        bootstrap, tmp_path, request, storage):
    """Separate state directories, as on two machines: a task that moves can only be
    restored by downloading its snapshot from the shared checkpoint storage."""
    spec = {}
    shared = None
    if storage == "s3":
        server = request.getfixturevalue("s3_server")
        shared = f"s3://{server.bucket}/{unique_name('scale-out')}"
        spec["env"] = server.env()
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, chunk=400, chunk_pause_s=0.4, storage=shared)
    pool = WorkerPool(scenario, separate_state_dirs=True, spec=spec)
    with _stopped_at_end(pool):
        scenario.start_feeding()
        pool.start("a")
        pool.start("b")
        # The group assigns the input's partitions; each carries its repartition partition.
        tasks = scenario.partitions
        for victim, how in (("a", "term"), ("b", "kill"), ("a", "kill"), ("b", "term")):
            survivor = "b" if victim == "a" else "a"
            # More committed output since the last change: checkpoints with state exist.
            seen = len(scenario.outputs())
            wait_for(lambda: len(scenario.outputs()) >= min(seen + 800, scenario.records), 120, 0.5,
                     "the workers to commit more output")
            pool.check_alive()
            pool.kill(victim) if how == "kill" else pool.terminate(victim)
            wait_for(lambda: len(group_assignment(bootstrap, scenario.group).get(survivor, ())) == tasks,
                     60, 0.5, f"worker {survivor} to take over every task")
            pool.start(victim)
        scenario.wait_fed()
        scenario.wait_complete(None, timeout=180)
    _assert_exactly_once(scenario)
    downloads = [int(n) for n in re.findall(r"(\d+) downloaded", pool.log_texts())]
    assert any(downloads), "no task was ever restored from the shared storage"


def test_a_worker_that_joins_later_takes_an_equal_share_of_every_stage(bootstrap, tmp_path):
    """librdkafka's cooperative-sticky assignor hands a joining member whole topics: left
    to it, the second worker would take every task of one stage and leave the first with
    every task of the other. The repartition stage's partition p travels with the
    source's partition p, so each worker holds half of each stage, and the group itself
    assigns only the source's partitions."""
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, partitions=8, chunk=400, chunk_pause_s=0.3)
    scenario.start_feeding()
    first = start_controlled(scenario, worker_id="a").wait_ready()
    workers = [first]
    try:
        wait_for(lambda: len(first.status()["tasks"]) == 16, 90, 0.25, "the first worker to hold every task")
        workers.append(start_controlled(scenario, worker_id="b").wait_ready())
        repartition = repartition_topic(scenario.group, "by-user")

        def partitions(tasks: list[str], topic: str) -> set[int]:
            return {int(t.rpartition("-")[2]) for t in tasks if t.startswith(topic + "-")}

        def held() -> list[list[str]]:
            return [sorted(t["task"] for t in worker.status()["tasks"]) for worker in workers]

        def each_holds_half_of_each_stage() -> bool:
            shares = [(partitions(tasks, scenario.input), partitions(tasks, repartition)) for tasks in held()]
            return all(len(sources) == 4 and carried == sources for sources, carried in shares)

        wait_for(each_holds_half_of_each_stage, 60, 0.5, lambda: f"each worker to hold half of each stage: {held()}")
        assignment = group_assignment(bootstrap, scenario.group)
        assert {topic for owned in assignment.values() for topic, _ in owned} == {scenario.input}
        scenario.wait_fed()
        scenario.wait_complete(None, timeout=180)
        for worker in workers:
            assert worker.process.terminate() == 0, worker.process.log_tail()
    finally:
        for worker in workers:
            worker.process.kill()
    _assert_exactly_once(scenario)


def test_a_worker_stops_when_the_group_assigns_another_member_a_partition_it_takes_along(bootstrap, tmp_path):
    """A worker of another version that subscribes to the repartition topic itself is
    given its partitions by the group, while this version takes them along with the
    source's: both would run those tasks. The worker stops at once, naming the other."""
    scenario = RunningSum(bootstrap, tmp_path, records=1_000)
    repartition = repartition_topic(scenario.group, "by-user")
    create_topics(bootstrap, [repartition], scenario.partitions)
    other = Consumer({"bootstrap.servers": bootstrap, "group.id": scenario.group,
                      "client.id": f"{scenario.group}-older", "partition.assignment.strategy": "cooperative-sticky"})
    other.subscribe([scenario.input, repartition])
    stop = threading.Event()

    def keep_polling() -> None:
        while not stop.is_set():
            other.poll(0.1)

    def holds_every_partition() -> bool:
        other.poll(0.1)
        return len(other.assignment()) == 2 * scenario.partitions

    poller = threading.Thread(target=keep_polling, daemon=True)
    worker = None
    try:
        wait_for(holds_every_partition, 30, 0, "the other member to hold every partition")
        poller.start()
        worker = scenario.start_worker()
        assert worker.wait(90) == 1, worker.log_tail()
        log = worker.log_text()
        assert "to worker older" in log and "Every worker of a group must run the same version" in log, log
    finally:
        stop.set()
        if worker is not None:
            worker.kill()
        if poller.is_alive():
            poller.join()  # a consumer must not be closed while another thread polls it
        other.close()


def test_graceful_stop_leaves_the_group_at_once(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000)
    pool = WorkerPool(scenario)
    with _stopped_at_end(pool):
        scenario.feed_all_now()
        pool.start("leaver")
        pool.start("stayer", extra_args=["--static-membership", "--stay-in-group-on-stop"])
        pool.start("w2")
        wait_for(lambda: group_members(bootstrap, scenario.group) == {"leaver", "stayer", "w2"}, 60, 0.5,
                 "three members")
        pool.terminate("leaver")
        pool.terminate("stayer")
        # A static member that stays keeps its place until its session times out.
        assert group_members(bootstrap, scenario.group) == {"stayer", "w2"}
        scenario.wait_complete(None, timeout=120)
    report = scenario.check()
    assert report.ok, report.summary()


def test_repartition_topic_is_created_with_the_source_partition_count(bootstrap):
    source = unique_name("orders")
    create_topics(bootstrap, [source], partitions=3)
    group = unique_name("topics")

    def job(partitions: int | None) -> Job:
        j = Job("topics")
        j.source(source, uid="in").key_by(lambda v: v, uid="by", partitions=partitions) \
            .aggregate(lambda acc, v: acc, initial=0, uid="agg")
        return j

    counts = ensure_topics(plan(job(None), group), {"bootstrap.servers": bootstrap})
    topic = repartition_topic(group, "by")
    assert counts[topic] == 3
    assert len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
               .topics[topic].partitions) == 3
    with pytest.raises(ConfigurationError, match=re.escape(f"{topic!r} has 3 partitions but key_by 'by' asks for 6")):
        ensure_topics(plan(job(6), group), {"bootstrap.servers": bootstrap})


def test_a_consumer_subscribing_as_soon_as_topics_are_created_is_given_their_partitions(bootstrap):
    """A consumer that subscribes before the cluster lists a new topic is told it does
    not exist and asks again only at its next metadata refresh (minutes): the stage
    reading the repartition topic would sit idle that long."""
    source = unique_name("orders")
    create_topics(bootstrap, [source], partitions=4)
    for attempt in range(5):
        group = unique_name(f"visible-{attempt}")
        job = Job("visible")
        job.source(source, uid="in").key_by(lambda v: v, uid="by") \
            .aggregate(lambda acc, v: acc, initial=0, uid="agg")
        ensure_topics(plan(job, group), {"bootstrap.servers": bootstrap})
        topic = repartition_topic(group, "by")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "topic.metadata.refresh.interval.ms": 300_000})
        try:
            consumer.subscribe([source, topic])
            deadline = time.monotonic() + 15
            while len(consumer.assignment()) < 8 and time.monotonic() < deadline:
                consumer.poll(0.2)
            assert {tp.topic for tp in consumer.assignment()} == {source, topic}, f"attempt {attempt}"
        finally:
            consumer.close()


def test_changed_partition_count_under_keyed_state_is_a_clear_error(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=2_000)
    scenario.feed_all_now()
    worker = scenario.start_worker()
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    topic = repartition_topic(scenario.group, "by-user")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_partitions([NewPartitions(topic, 6)])[topic].result(30)

    worker = scenario.start_worker()
    assert worker.wait(60) == 1, worker.log_tail()
    last = worker.log_tail(3)
    assert f"topic {topic!r} has 6 partitions" in last and "when it had 4" in last, last
