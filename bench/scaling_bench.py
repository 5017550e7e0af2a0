"""Scaling per core: 1, 2 and 4 workers of a job, each worker held to the same CPU share.

Why: on this 2-core machine the workers share the cores with the broker and the output
watcher, so "2 workers against 1" uncapped says how much CPU was idle, not how the design
scales. Here each worker runs in a cgroup of its own capped at `cpu_per_worker` cores
(bench/cpu_cap.py): small enough that 4 workers leave the broker and the watcher more
than a core, so that N workers can do N times the work of one and whatever falls short
is the design's (rebalancing, per-task costs, uneven assignment).

Section `scaling` of bench/suite.py (results key `scaling_per_core`, plot
docs/bench/scaling.png). Runs are scale_out.throughput_run: the input pre-produced
(PARTITIONS partitions, so that 4 workers each own some), the clock from starting the
workers until the N-th output is committed; repetitions interleaved (1, 2, 4, 1, 2, 4,
...) for the one-stage and the two-stage running sum. Reported per job and worker count:
records/s, the ratio to 1 worker of the same job in the same repetition, the workers' CPU
seconds, the share of their caps they used, and cpu.stat's throttling (periods that ended
with the quota used up: the cap was binding).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import cpu_cap
import scale_out
import workload
from runner import find_broker_pid

JOBS = {"one-stage": scale_out.PREKEYED_JOB, "two-stage": scale_out.TWO_STAGE_JOB}
WORKER_COUNTS = (1, 2, 4)
PARTITIONS = 8  # 4 workers own 2 input partitions each
# 4 workers at 0.2 core take 0.8 of the 2 cores; the broker and the watcher keep 1.2
DEFAULT_CPU_PER_WORKER = 0.2
TARGETS = {2: 1.8, 4: 3.4}  # issue 21: speed-up over 1 worker
SUMMARY_KEYS = ("records_per_s", "balanced_records_per_s", "balanced_after_s", "first_output_s", "elapsed_s",
                "cpu_s", "cpu_us_per_record", "cap_used", "cap_used_balanced", "throttled_fraction",
                "balanced_throttled_fraction", "throttled_s", "broker_cores", "watcher_cpu_s", "machine_cores_busy")
RATIOS = {"records_per_s": "ratio", "balanced_records_per_s": "balanced_ratio"}

Log = Callable[[str], None]


def scaling_per_core(bootstrap: str, records: int, users: int, reps: int, cpu_per_worker: float,
                     log: Log, worker_counts: tuple[int, ...] = WORKER_COUNTS) -> dict:
    """Every job at every worker count, `reps` interleaved repetitions; ratios per repetition."""
    if not 0 < cpu_per_worker * max(worker_counts) <= (os.cpu_count() or 1):
        raise ValueError(f"{max(worker_counts)} workers at {cpu_per_worker} core each do not fit "
                         f"this machine's {os.cpu_count()} cores")
    root = cpu_cap.find_root()  # before anything else: no caps, no section
    log(f"scaling: workers capped at {cpu_per_worker} core each in {root.path} (cgroup v{root.version})")
    broker_pid = find_broker_pid(bootstrap)
    input_topic = workload.ensure_input(bootstrap, records, users, log=log, partitions=PARTITIONS)
    runs: dict[str, dict[str, list[dict]]] = {job: {str(n): [] for n in worker_counts} for job in JOBS}
    for rep in range(reps):
        for job, path in JOBS.items():
            for workers in worker_counts:
                time.sleep(2)  # let the broker settle after the previous run's clean-up
                run = capped_run(bootstrap, root, input_topic, records, path, workers, cpu_per_worker, broker_pid)
                runs[job][str(workers)].append(run)
                log(f"  rep {rep} {job} {workers} worker(s): {_describe(run)}")
    result = {"records": records, "users": users, "partitions": PARTITIONS, "reps": reps,
              "cpu_per_worker": cpu_per_worker, "worker_counts": list(worker_counts),
              "cgroup": {"path": str(root.path), "version": root.version}, "targets": TARGETS,
              "runs": runs, "summary": {job: summarize(by_count) for job, by_count in runs.items()}}
    log(table(result))
    return result


def capped_run(bootstrap: str, root: cpu_cap.CgroupRoot, input_topic: str, records: int, job: Path,
               workers: int, cores: float, broker_pid: int | None) -> dict:
    """One timed run with every worker in a cgroup of its own, capped at `cores`."""
    names = [f"w{i}" for i in range(workers)]
    with cpu_cap.cpu_caps(root, names, cores) as caps:
        sampler = ThrottleSampler(list(caps.values()))
        sampler.start()
        try:
            run = scale_out.throughput_run(bootstrap, input_topic, records, workers, job, broker_pid,
                                           partitions=PARTITIONS, launch=lambda w, argv: caps[w].wrap(argv))
        except scale_out.RunFailed as exc:  # kept in the results; the other runs go on
            return {"workers": workers, "ok": False, "error": str(exc), "cpu_per_worker": cores}
        finally:
            sampler.stop()
        # read once the workers are stopped: the few ms after the last output count too
        throttling = [caps[name].throttling() for name in names]
    began = run.pop("began_monotonic")
    balanced = run["balanced_after_s"]
    run.update(ok=True, cpu_per_worker=cores, **_cap_figures(run, records, workers, cores, throttling),
               balanced_throttled_fraction=(sampler.fraction_between(began + balanced, began + run["elapsed_s"])
                                            if balanced is not None else None))
    return run


class ThrottleSampler(threading.Thread):
    """Every cap's cpu.stat, summed, every `interval` s: the share of the periods in a
    window of the run that ended throttled (the whole run's counters mix in start-up)."""

    def __init__(self, caps: list[cpu_cap.CpuCap], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.caps, self.interval = caps, interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, periods, throttled periods)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            stats = [cap.throttling() for cap in self.caps]
            self.samples.append((time.monotonic(), sum(s.periods for s in stats),
                                 sum(s.throttled_periods for s in stats)))
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def fraction_between(self, start: float, end: float) -> float | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        periods = inside[-1][1] - inside[0][1] if len(inside) > 1 else 0
        return (inside[-1][2] - inside[0][2]) / periods if periods else None


def _cap_figures(run: dict, records: int, workers: int, cores: float,
                 throttling: list[cpu_cap.Throttling]) -> dict:
    """How much of their caps the workers used, and how often the caps held them back."""
    periods = sum(t.periods for t in throttling)
    elapsed = run["elapsed_s"]
    balanced = run["balanced_cpu_utilisation"]
    return {
        "cpu_us_per_record": run["cpu_s"] / records * 1e6,
        # 1.0: every worker used all the CPU its cap allowed, over the run and from the
        # moment every worker held its tasks (start-up and rebalances over)
        "cap_used": run["cpu_s"] / (cores * workers * elapsed),
        "cap_used_balanced": balanced / (cores * workers) if balanced is not None else None,
        "throttled_fraction": sum(t.throttled_periods for t in throttling) / periods if periods else None,
        "throttled_s": sum(t.throttled_s for t in throttling),
        "throttling": [vars(t) for t in throttling],
        "broker_cores": run["broker_cpu_s"] / elapsed if run["broker_cpu_s"] is not None else None,
    }


def summarize(by_count: dict[str, list[dict]]) -> dict[str, dict]:
    """Medians per worker count, and the speed-up over 1 worker as the median of the
    ratios within each repetition (runs of one repetition follow each other, so load from
    elsewhere on the machine shifts them alike more often than runs minutes apart)."""
    single = by_count["1"]
    summary = {}
    for count, runs in by_count.items():
        ok = [r for r in runs if r["ok"]]
        row = {key: _median([r[key] for r in ok]) for key in SUMMARY_KEYS}
        row["runs"], row["failed_runs"] = len(runs), len(runs) - len(ok)
        for rate, ratio in RATIOS.items():
            row[ratio] = _median([r[rate] / s[rate] for r, s in zip(runs, single)
                                  if r["ok"] and s["ok"] and r[rate] and s[rate]])
        target = TARGETS.get(int(count))
        row["target"] = target
        for ratio in RATIOS.values():
            row[f"{ratio}_meets_target"] = row[ratio] >= target if target and row[ratio] else None
        summary[count] = row
    return summary


def table(result: dict) -> str:
    """The section's table for docs/bench/README.md."""
    lines = ["| job | workers | records/s | vs 1 worker | every worker has tasks after | records/s from then "
             "| vs 1 worker | CPU µs/record | cap used: run (from then) | throttled periods: run (from then) "
             "| broker cores |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for job, rows in result["summary"].items():
        for count, row in rows.items():
            failed = f" ({row['failed_runs']} of {row['runs']} runs failed)" if row["failed_runs"] else ""
            lines.append(
                f"| {job} | {count}{failed} | {_num(row['records_per_s'])} | {_x(row['ratio'])} | "
                f"{_float(row['balanced_after_s'])} s | {_num(row['balanced_records_per_s'])} | "
                f"{_x(row['balanced_ratio'])} | {_float(row['cpu_us_per_record'])} | "
                f"{_pct(row['cap_used'])} ({_pct(row['cap_used_balanced'])}) | "
                f"{_pct(row['throttled_fraction'])} ({_pct(row['balanced_throttled_fraction'])}) | "
                f"{_float(row['broker_cores'])} |")
    return "\n".join(lines)


def plot(result: dict, path: Path, quick: bool = False) -> None:
    """records/s and speed-up against the worker count, per job, with the ideal and the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result["worker_counts"]
    fig, (rates, speedup) = plt.subplots(1, 2, figsize=(10, 4.2))
    for (job, rows), color in zip(result["summary"].items(), ("#4878a8", "#d8742c")):
        for rate, style, what in (("records_per_s", "o-", "start to end"),
                                  ("balanced_records_per_s", "s--", "once every worker has tasks")):
            ratio = RATIOS[rate]
            known = [n for n in counts if rows[str(n)][ratio] is not None]
            rates.plot(known, [rows[str(n)][rate] / 1000 for n in known], style, color=color, label=f"{job}, {what}")
            speedup.plot(known, [rows[str(n)][ratio] for n in known], style, color=color, label=f"{job}, {what}")
    speedup.plot(counts, counts, ":", color="grey", label="ideal")
    speedup.plot(list(TARGETS), list(TARGETS.values()), "r_", markersize=18, mew=2, label="target")
    for ax in (rates, speedup):
        ax.set_xticks(counts), ax.set_xlabel("workers"), ax.legend(fontsize=7)
    rates.set_ylabel("thousand records / s (median)"), speedup.set_ylabel("× 1 worker, same repetition")
    run = "quick run, " if quick else ""
    fig.suptitle(f"Scaling at {result['cpu_per_worker']} core per worker ({run}{result['records']:,} records, "
                 f"{result['partitions']} partitions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _describe(run: dict) -> str:
    if not run["ok"]:
        return f"FAILED: {run['error']}"
    return (f"{run['records_per_s']:,.0f} rec/s, {_num(run['balanced_records_per_s'])} once every worker has "
            f"tasks (after {_float(run['balanced_after_s'])} s), {run['elapsed_s']:.1f} s; "
            f"workers' CPU {run['cpu_s']:.1f} s, cap used {_pct(run['cap_used'])} "
            f"({_pct(run['cap_used_balanced'])} from then), throttled in {_pct(run['throttled_fraction'])} of "
            f"periods ({_pct(run['balanced_throttled_fraction'])} from then); broker {_float(run['broker_cores'])} "
            f"cores, machine {run['machine_cores_busy']:.2f} cores busy")


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _num(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _pct(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"


def _float(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"
