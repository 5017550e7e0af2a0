"""Options every `eos` command spells the same way.

One name per thing across commands: the job id is `JOB` (an argument where the command
is about one job) or `--job`; Kafka is reached with `--bootstrap-servers` (environment
KAFKA_BOOTSTRAP_SERVERS), `--kafka-config` and `--kafka-config-file`; every time flag
takes a duration (`500ms`, `30s`, `5m`; a bare number is seconds); secrets come from a
file or the environment, never from the command line, where `ps` shows them.

Spellings of earlier versions keep working as hidden aliases (`AliasedOption`), so
scripts written for them run unchanged; help shows only the current names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from eos.errors import ConfigurationError
from service.runtime.config import load_kafka_config, parse_duration

log = logging.getLogger(__name__)

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
KAFKA_CONFIG_FILE_ENV = "EOS_KAFKA_CONFIG_FILE"
CHECKPOINT_STORAGE_ENV = "EOS_CHECKPOINT_STORAGE"
CONTROL_TOKEN_ENV = "EOS_CONTROL_TOKEN"
CONTROL_TOKEN_FILE_ENV = "EOS_CONTROL_TOKEN_FILE"
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
# Loggers of client libraries that would log credentials-derived material at DEBUG.
_CLIENT_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


class AliasedOption(click.Option):
    """An option that also accepts older spellings, which help does not show."""

    def __init__(self, *args: Any, hidden_aliases: Iterable[str] = (), **kwargs: Any) -> None:
        self.hidden_aliases = tuple(hidden_aliases)
        names, *rest = args
        super().__init__([*names, *self.hidden_aliases], *rest, **kwargs)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown = [o for o in self.opts if o not in self.hidden_aliases]
        all_opts, self.opts = self.opts, shown
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = all_opts


def option(*names: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """click.option with `hidden_aliases=` for earlier spellings."""
    return click.option(*names, cls=AliasedOption, **kwargs)


class Duration(click.ParamType):
    """A duration, in seconds: `500ms`, `1s`, `2m`, `1h`; a bare number is seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        what = f"--{param.name.replace('_', '-')}" if param is not None and param.name else "duration"
        try:
            return parse_duration(value, what)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level.upper())
    # The AWS SDK logs request headers and signing details at DEBUG: never let
    # credentials-derived material reach the logs, whatever level the user asked for.
    for name in _CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


def _log_level_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        configure_logging(value)


def log_level_option() -> click.Option:
    """`--log-level`, accepted after any sub-command as well as before it."""
    return click.Option(["--log-level"], default=None, expose_value=False, is_eager=True,
                        type=click.Choice(LOG_LEVELS, case_sensitive=False), callback=_log_level_callback,
                        help="Log level (also accepted before the sub-command; default INFO).")


def add_global_options(command: click.Command) -> None:
    """Gives every leaf command under `command` the global options."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub)
        return
    if not any(p.name == "log_level" for p in command.params):
        command.params.append(log_level_option())


# -- Kafka ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaSettings:
    """How a command reaches Kafka: bootstrap servers and any librdkafka settings."""

    bootstrap_servers: str | None
    config: dict[str, str] = field(default_factory=dict)

    def client_config(self) -> dict[str, str]:
        if not self.bootstrap_servers:
            raise click.UsageError(f"this needs Kafka: give --bootstrap-servers or set {BOOTSTRAP_ENV}")
        return {"bootstrap.servers": self.bootstrap_servers, **self.config}


def bootstrap_option(required: bool = True, help_suffix: str = "") -> Callable[..., Any]:
    return option("--bootstrap-servers", envvar=BOOTSTRAP_ENV, show_envvar=True, required=required,
                  metavar="HOST:PORT[,...]", help="Kafka bootstrap servers." + help_suffix)


def kafka_options(required: bool = True, help_suffix: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--bootstrap-servers, --kafka-config and --kafka-config-file, handed to the command
    as one `kafka: KafkaSettings` argument."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @bootstrap_option(required, help_suffix)
        @option("--kafka-config", "kafka_config", multiple=True, metavar="KEY=VALUE",
                help="librdkafka setting (repeatable); VALUE may be @env:VAR or @file:PATH to keep secrets "
                     "off the command line.")
        @option("--kafka-config-file", "kafka_config_files", multiple=True, envvar=KAFKA_CONFIG_FILE_ENV,
                show_envvar=True, type=click.Path(path_type=Path),
                help="File of KEY=VALUE librdkafka settings (e.g. SASL/TLS); --kafka-config wins.")
        @functools.wraps(command)
        def wrapper(*args: Any, bootstrap_servers: str | None, kafka_config: tuple[str, ...],
                    kafka_config_files: tuple[Path, ...], **kwargs: Any) -> Any:
            settings = KafkaSettings(bootstrap_servers, load_kafka_config(kafka_config, kafka_config_files))
            return command(*args, kafka=settings, **kwargs)

        return wrapper

    return decorate


# -- the job ------------------------------------------------------------------------------

JOB_HELP = "The job id: its consumer group (`eos run --job`, by default the job's name)."


def job_argument(required: bool = True) -> Callable[..., Any]:
    return click.argument("job", metavar="JOB" if required else "[JOB]", required=required)


# -- secrets --------------------------------------------------------------------------------


def read_secret_file(path: Path | str, what: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{what} {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigurationError(f"{what} {path} is empty")
    return secret


def control_token_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The control token, from `--control-token-file` (env EOS_CONTROL_TOKEN_FILE) or
    the environment variable EOS_CONTROL_TOKEN; handed to the command as `control_token`.
    The token on the command line (`--control-token`, `--token`) is still accepted, with
    a warning, for scripts of earlier versions."""
    import functools

    @option("--control-token-file", type=click.Path(path_type=Path, dir_okay=False), envvar=CONTROL_TOKEN_FILE_ENV,
            show_envvar=True, default=None,
            help=f"File holding the control API's bearer token (or set {CONTROL_TOKEN_ENV}).")
    @click.option("--control-token", "--token", "token_flag", hidden=True, default=None)
    @functools.wraps(command)
    def wrapper(*args: Any, control_token_file: Path | None, token_flag: str | None, **kwargs: Any) -> Any:
        token = None
        if control_token_file is not None:
            token = read_secret_file(control_token_file, "--control-token-file")
        elif token_flag:
            log.warning("a control token on the command line is visible to every user of this machine (ps); "
                        "use --control-token-file or %s", CONTROL_TOKEN_ENV)
            token = token_flag
        elif os.environ.get(CONTROL_TOKEN_ENV):
            token = os.environ[CONTROL_TOKEN_ENV]
        return command(*args, control_token=token, **kwargs)

    return wrapper


def worker_urls_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--worker URL` (repeatable): the job's workers named by hand instead of found
    through its consumer group."""
    return click.option("--worker", "workers", multiple=True, metavar="URL",
                        help="A worker's HTTP address, e.g. http://10.0.0.5:8080 (repeatable): name the job's "
                             "workers instead of finding them through its consumer group.")(command)
