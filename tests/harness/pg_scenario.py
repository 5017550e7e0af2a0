"""The running sum into PostgreSQL (examples/running_sum_postgres.py) as a scenario: the
Kafka scenario's topics, feeder and workers, plus a database, and both oracles."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.harness.oracle import OracleReport
from tests.harness.scenario import RunningSum
from tests.harness.pg_table_oracle import TableReport, check_tables, read_tables
from tests.harness.worker_process import REPO, WorkerProcess, wait_for

JOB = REPO / "examples" / "running_sum_postgres.py"


@dataclass
class PostgresRunningSum(RunningSum):
    dsn: str = ""
    # Where the oracle reads (default: where the workers write; a test may put a proxy
    # between the workers and the server).
    read_dsn: str = ""
    job_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.read_dsn = self.read_dsn or self.dsn
        self.spec_overrides = {"job": JOB, **self.spec_overrides,
                               "params": {"input": self.input, "output": self.output, "postgres": self.dsn,
                                          **self.job_params}}

    def logged_ids(self) -> set[int]:
        try:
            return {order_id for order_id, *_ in read_tables(self.read_dsn)[1]}
        except Exception:  # noqa: BLE001 - tables not created yet, or the server restarting
            return set()

    def wait_in_table(self, worker: WorkerProcess | None, timeout: float = 180,
                      refused: set[int] = frozenset()) -> None:
        """Until every input id (but those the table refuses) is in the log table, or the
        worker died."""
        want = set(self.orders) - set(refused)

        def done() -> bool:
            if worker is not None and not worker.alive():
                raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
            return want <= self.logged_ids()

        wait_for(done, timeout, 1.0, lambda: f"every input id in the table ({len(want - self.logged_ids())} missing)")

    def check_all(self, refused: set[int] = frozenset()) -> tuple[OracleReport, TableReport]:
        return self.check(), check_tables(self.orders, self.read_dsn, refused)
