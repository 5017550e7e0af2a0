"""`eos job list|status`: the jobs on a Kafka cluster and one job as a whole."""

from __future__ import annotations

import json

import click

from service.cli.options import JOB_HELP, KafkaSettings, job_argument, kafka_options, worker_urls_option
from service.monitoring.job_status import JobView, job_snapshot, list_jobs


@click.group("job")
def job() -> None:
    """Jobs as a whole: found through their consumer groups."""


@job.command("list")
@kafka_options()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
def list_cmd(kafka: KafkaSettings, as_json: bool) -> None:
    """The eos jobs of the cluster: running ones (their workers) and stopped ones (groups
    whose committed offsets name checkpoints)."""
    jobs = list_jobs(kafka.client_config())
    if as_json:
        for j in jobs:
            click.echo(json.dumps({"job": j.job, "state": j.state, "workers": list(j.workers),
                                   "partitions": j.partitions}))
        return
    if not jobs:
        click.echo("no eos jobs on this cluster")
        return
    click.echo(f"{'JOB':<40} {'STATE':<8} {'PARTITIONS':>10}  WORKERS")
    for j in jobs:
        click.echo(f"{j.job:<40} {j.state:<8} {j.partitions:>10}  {', '.join(j.workers) or '-'}")


@job.command("status", help=f"Every worker of JOB with its tasks, lag and last checkpoint. {JOB_HELP}")
@job_argument()
@kafka_options(required=False, help_suffix=" Not needed with --worker.")
@worker_urls_option
@click.option("--json", "as_json", is_flag=True, help="Print /job.json's document.")
def status_cmd(job: str, kafka: KafkaSettings, workers: tuple[str, ...], as_json: bool) -> None:
    view = JobView(job, kafka.client_config() if not workers else {})
    snapshot = job_snapshot(job, view.peers(list(workers))) if workers else view.snapshot()
    if as_json:
        click.echo(json.dumps(snapshot, indent=2))
        return
    totals = snapshot["totals"]
    click.echo(f"job {snapshot['job']} (group {snapshot['group']}): {totals['reachable']}/{totals['workers']} "
               f"workers answering, {totals['tasks']} tasks, lag {totals['lag'] if totals['lag'] is not None else '-'}, "
               f"newest checkpoint {totals['last_checkpoint_id']}")
    for w in snapshot["workers"]:
        where = w["url"] or ", ".join(w["advertised"]) or "-"
        if not w["reachable"]:
            click.echo(f"  {w['worker']:<16} UNREACHABLE  {where}: {w['error']}")
            continue
        last = w["last_checkpoint"]
        click.echo(f"  {w['worker']:<16} {w['state']:<11} {where}  {w['tasks']} tasks, lag "
                   f"{w['lag'] if w['lag'] is not None else '-'}, last checkpoint "
                   f"{last['checkpoint_id'] if last else '-'}")
    for t in snapshot["tasks"]:
        click.echo(f"    {t['task']:<40} stage {t['stage']:<16} worker {t['worker']:<12} position "
                   f"{t['position'] if t['position'] is not None else '-':>9}  lag "
                   f"{t['lag'] if t['lag'] is not None else '-':>7}  checkpoint {t['checkpoint_id']}")
    if not snapshot["workers"]:
        raise click.ClickException(f"no worker of job {job!r} is in its consumer group")
