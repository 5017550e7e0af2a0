"""Prometheus metrics of one worker, named as Flink names them where Flink has a name.

Nothing here is touched per record: counters are bumped per batch or per checkpoint
(a prometheus-client counter takes a lock on every increment), consumer lag and
records out come from librdkafka's statistics once per interval (see kafka_stats.py).

Labels: `job` (the group, the job's identity), `worker`, and where it means something
`topic`, `partition` or `operator`. All are bounded by the job's shape (its topics,
their partitions and its operator uids), never by data.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120)
_PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class WorkerMetrics:
    def __init__(self, job: str, worker: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.job, self.worker = job, worker
        base = ["job", "worker"]
        r = self.registry

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, base + list(extra), registry=r)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, base + list(extra), registry=r)

        self.checkpoints_completed = counter("eos_checkpoints_completed", "Checkpoints committed.")
        self.checkpoints_failed = counter("eos_checkpoints_failed", "Checkpoints that failed and were aborted.")
        self.checkpoint_last_duration = gauge("eos_checkpoint_last_duration_seconds",
                                              "Duration of the last completed checkpoint.")
        self.checkpoint_duration = Histogram("eos_checkpoint_duration_seconds",
                                             "Duration of completed checkpoints.", base,
                                             buckets=_DURATION_BUCKETS, registry=r)
        self.checkpoint_last_size = gauge("eos_checkpoint_last_size_bytes",
                                          "Total state size referenced by the last checkpoint.")
        self.checkpoint_last_uploaded = gauge("eos_checkpoint_last_uploaded_bytes",
                                              "Bytes uploaded by the last checkpoint (incremental).")
        self.checkpoint_last_logged = gauge("eos_checkpoint_last_logged_bytes",
                                            "Bytes of state changes the last checkpoint logged to changelog "
                                            "topics (--snapshot-interval).")
        # Flink's split of a checkpoint's duration: the synchronous part, while the loop
        # waits (capture at the barrier), and the asynchronous part (write, snapshot,
        # upload, commit) while records go on into the next transaction.
        self.checkpoint_sync_duration = Histogram("eos_checkpoint_sync_duration_seconds",
                                                  "Synchronous part of completed checkpoints (processing paused).",
                                                  base, buckets=_PAUSE_BUCKETS, registry=r)
        self.checkpoint_async_duration = Histogram("eos_checkpoint_async_duration_seconds",
                                                   "Asynchronous part of completed checkpoints.", base,
                                                   buckets=_DURATION_BUCKETS, registry=r)
        self.checkpoint_alignment = gauge("eos_checkpoint_alignment_seconds",
                                          "Time from trigger until every task saw the barrier.")
        self.last_checkpoint_id = gauge("eos_last_checkpoint_id", "Id of the last completed checkpoint.")
        self.records_in = counter("eos_records_in", "Records consumed.", ("topic",))
        self.records_out = counter("eos_records_out", "Records sent to Kafka (including those of "
                                   "transactions that later aborted).", ("topic",))
        self.consumer_lag = gauge("eos_consumer_lag", "Records between the worker's position and the "
                                  "partition's last stable offset.", ("topic", "partition"))
        self.restarts = counter("eos_restarts", "Restarts from the last completed checkpoint after a "
                                "failure: rewinds in this process, and starts of this worker slot after "
                                "an unclean exit of its previous process.")
        self.recovery_duration = gauge("eos_last_recovery_duration_seconds",
                                       "Duration of the last state recovery.")
        self.state_keys = gauge("eos_state_keys", "Keys in state (RocksDB estimate) at the last "
                                "checkpoint, summed over this worker's tasks.", ("operator",))
        self.dlq_records = counter("eos_dlq_records", "Records sent to the dead-letter topic.")
        self.input_records_missing = counter("eos_input_records_missing", "Input records deleted from Kafka before "
                                             "the job processed them (see --on-missing-input).", ("topic",))
        self.late_records_dropped = counter("eos_late_records_dropped", "Records that arrived for windows "
                                            "already closed (past their end plus grace), dropped.", ("operator",))
        self.late_records_routed = counter("eos_late_records_routed", "Records that arrived for windows already "
                                           "closed, sent to the window's late-data topic.", ("operator",))
        self.state_expired = counter("eos_state_expired", "State values whose time to live ran out, deleted by "
                                     "the cleanup at checkpoints.", ("operator",))
        self.tasks = gauge("eos_tasks", "Tasks (stage partitions) this worker runs.")
        self.scrub_checked = counter("eos_storage_scrub_files_checked", "Snapshot files the storage scrub checked.")
        self.scrub_damaged = counter("eos_storage_scrub_files_damaged", "Snapshot files the storage scrub found "
                                     "missing, truncated or corrupt in checkpoint storage.")
        self.scrub_mended = counter("eos_storage_scrub_files_mended", "Damaged snapshot files the storage scrub "
                                    "wrote again from an intact local copy.")
        # Series without extra labels exist from the start, so a scrape shows 0 rather
        # than nothing before the first failure or restart.
        for metric in (self.checkpoints_completed, self.checkpoints_failed, self.checkpoint_duration,
                       self.restarts, self.dlq_records, self.tasks, self.last_checkpoint_id,
                       self.scrub_checked, self.scrub_damaged, self.scrub_mended):
            self.labels(metric)

    def labels(self, metric, **extra: str):
        return metric.labels(job=self.job, worker=self.worker, **extra)

    def exported_names(self) -> set[str]:
        """Every sample name a scrape can show (counter `_total`, histogram `_bucket`...),
        for checking dashboards and alerts against what exists."""
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        return names
