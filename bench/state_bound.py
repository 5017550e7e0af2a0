"""What RocksDB costs with large state: a bound, not a mode of the product.

With 1,000,000 users nearly every record changes a key no checkpoint has written yet, so
the one-stage running sum reads RocksDB for keys that left the cache and writes about one
key per record at every checkpoint. How much of the gap to the plain loop is RocksDB's?
The candidate registered here runs the same worker with the whole state held in the
write-back cache (`--state-cache 4096`: nothing is evicted, so nothing is read back) and
with every write batch dropped instead of written (`TaskStore.commit` does nothing, so
RocksDB stays empty and its checkpoints are empty). Everything else runs as in the
product: the cache, the captures, the encoding of every changed value at every
checkpoint, the transactions. Its output is right (the cache holds every total), but a
restart would lose the state: it only says how fast the job could be if RocksDB cost
nothing.

    .venv-bench/bin/python bench/suite.py --only state-bound

Run as a script, it is that worker: `python bench/state_bound.py run JOB ...` takes the
arguments of `eos run`.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

CANDIDATE = "eos-prekeyed-rocksdb-idle"
PLAIN, EOS = "plain-confluent-eos", "eos-exactly-once-prekeyed"
USERS = 1_000_000
# MiB: far above what 1,000,000 running sums take in the cache (about 430 MB).
WHOLE_STATE_CACHE_MIB = "4096"


def _worker_argv(ctx) -> list[str]:
    import runner

    eos = runner.REGISTRY[EOS].build(ctx)
    assert eos[1:3] == ["-m", "service.cli"], eos
    return [eos[0], str(Path(__file__).resolve()), *eos[3:], "--state-cache", WHOLE_STATE_CACHE_MIB]


def register_candidate() -> None:
    import runner

    runner.register(CANDIDATE, _worker_argv,
                    description="the prekeyed running sum with the whole state in the cache and nothing written "
                                "to RocksDB (a bound: what the job would do if RocksDB cost nothing)")


def state_bound(bootstrap: str, records: int, reps: int, log) -> dict:
    """The plain loop, the product and the bound on the same large-state input, interleaved."""
    import runner

    result = runner.run_benchmark(bootstrap=bootstrap, records_list=[records], users_list=[USERS], reps=reps,
                                  only=[PLAIN, EOS, CANDIDATE], log=log)
    summaries = {name: result["configs"][0]["candidates"][name]["summary"] for name in (PLAIN, EOS, CANDIDATE)}

    def each(figure: str, statistic: str) -> dict:
        return {name: summary.get(figure, {}).get(statistic) for name, summary in summaries.items()}

    return {"records": records, "users": USERS, "reps": reps, "records_per_s": each("records_per_s", "median"),
            "cpu_us_per_record": each("cpu_us_per_record", "median"), "runs": each("records_per_s", "values")}


def table(bound: dict) -> str:
    """The README's rows: the product and the bound, as ratios to the plain loop."""
    rates, cpu = bound["records_per_s"], bound["cpu_us_per_record"]
    plain = rates[PLAIN]
    lines = [f"| large state ({bound['users']:,} users): what RocksDB costs | records/s (median) | vs plain loop "
             "| CPU µs/record |", "|---|---:|---:|---:|"]
    for name, label in ((PLAIN, PLAIN), (EOS, EOS),
                        (CANDIDATE, "bound: whole state in the cache, nothing written to RocksDB")):
        if rates.get(name):
            lines.append(f"| {label} | {rates[name]:,.0f} | {rates[name] / plain:.2f}x | {cpu[name]:.1f} |")
    return "\n".join(lines)


def _drop_state_writes() -> None:
    from statestore.rocks import TaskStore

    TaskStore.commit = lambda self, batch: None  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _drop_state_writes()
    sys.argv[0] = "eos"
    runpy.run_module("service.cli", run_name="__main__", alter_sys=True)
