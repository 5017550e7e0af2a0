"""The `eos` command line: one group, one module per sub-command family."""

from __future__ import annotations

import sys

import click
from confluent_kafka import KafkaException

from eos.errors import EosError
from service.cli.checkpoints_cmd import checkpoints
from service.cli.demo_cmd import demo
from service.cli.generate_cmd import generate
from service.cli.job_cmd import job
from service.cli.kafka_cmd import kafka
from service.cli.options import LOG_LEVELS, add_global_options, configure_logging
from service.cli.run_cmd import run
from service.cli.savepoint_cmd import savepoint
from service.cli.state_cmd import state



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Log level; also accepted after the sub-command.")
def cli(log_level: str) -> None:
    """Exactly-once stream processing on Kafka."""
    configure_logging(log_level)


cli.add_command(kafka)
cli.add_command(run)
cli.add_command(demo)
cli.add_command(generate)
cli.add_command(checkpoints)
cli.add_command(savepoint)
cli.add_command(job)
cli.add_command(state)
add_global_options(cli)


def main() -> None:
    """Console entry point: product errors become one clear line and exit code 1."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EosError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KafkaException as exc:
        click.echo(f"error: Kafka: {exc.args[0].str() if exc.args else exc} "
                   "(is the broker running and the bootstrap address right?)", err=True)
        sys.exit(1)
