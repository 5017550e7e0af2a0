"""Every `eos` command spells the same thing the same way, and every spelling of earlier
versions still parses (scripts and other tools use them)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from service.cli import cli
from service.cli.options import DURATION, Duration

REPO = Path(__file__).resolve().parents[1]
JOB_FILE = str(REPO / "examples" / "running_sum.py")
# Commands that talk to Kafka, and must take --bootstrap-servers from KAFKA_BOOTSTRAP_SERVERS.
KAFKA_COMMANDS = {"run", "generate", "demo", "job list", "job status", "savepoint trigger", "savepoint stop",
                  "state get", "checkpoints list"}
# Words that name a time in an option: such an option takes a duration.
TIME_WORDS = ("timeout", "interval", "pause", "idle", "delay", "step", "period")
SECRET_WORDS = ("token", "password", "secret")


def _leaves(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(_leaves(command, path + " "))
        else:
            found[path] = command
    return found


COMMANDS = _leaves(cli)


def _shown(command: click.Command) -> list[click.Option]:
    """The options help shows, with only the names it shows."""
    ctx = click.Context(command)
    shown = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Option) and not param.hidden and param.get_help_record(ctx):
            shown.append(param)
    return shown


def _names(command: click.Command) -> set[str]:
    ctx = click.Context(command)
    names = set()
    for option in _shown(command):
        record = option.get_help_record(ctx)
        names |= {n.strip().split(" ")[0] for n in record[0].replace("/", ",").split(",")}
    return names


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_accepts_the_global_options_after_it(path):
    assert "--log-level" in _names(COMMANDS[path]), path


@pytest.mark.parametrize("path", sorted(KAFKA_COMMANDS))
def test_every_command_that_talks_to_kafka_takes_the_same_bootstrap_flag_and_variable(path):
    option = next(o for o in _shown(COMMANDS[path]) if "--bootstrap-servers" in o.opts)
    assert option.envvar == "KAFKA_BOOTSTRAP_SERVERS", path
    assert option.show_envvar or "KAFKA_BOOTSTRAP_SERVERS" in (option.help or ""), path


def test_the_job_id_has_one_name_in_every_command():
    for path, command in COMMANDS.items():
        names = _names(command)
        assert "--group" not in names, f"{path} shows --group; the job id is JOB / --job"
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        for argument in arguments:
            assert argument.name != "group", path
            if argument.name == "job":
                assert argument.metavar in ("JOB", "[JOB]"), path
        for option in _shown(command):
            if option.name in ("group", "job") or "--job" in option.opts:
                shown = [o for o in option.opts if o not in getattr(option, "hidden_aliases", ())]
                assert shown == ["--job"] and option.metavar == "JOB", (path, option.opts, option.metavar)
    assert isinstance(next(p for p in COMMANDS["savepoint stop"].params if p.name == "job"), click.Argument)
    assert isinstance(next(p for p in COMMANDS["job status"].params if p.name == "job"), click.Argument)


def test_every_time_flag_takes_a_duration():
    for path, command in COMMANDS.items():
        for option in _shown(command):
            long = [o for o in option.opts if o.startswith("--")]
            if any(w in name for name in long for w in TIME_WORDS) and not option.is_flag:
                assert isinstance(option.type, Duration), f"{path} {long} is a time flag without a duration type"
            assert not any(name.endswith(("-ms", "-seconds", "-secs")) for name in long), (path, long)


def test_no_secret_is_taken_on_the_command_line():
    for path, command in COMMANDS.items():
        for option in _shown(command):
            for name in option.opts:
                if name in getattr(option, "hidden_aliases", ()):
                    continue
                if any(w in name for w in SECRET_WORDS):
                    assert name.endswith("-file"), f"{path} shows {name}: secrets come from files or the environment"


def test_the_same_option_means_the_same_in_every_command():
    seen: dict[str, tuple[str, object, object]] = {}
    for path, command in sorted(COMMANDS.items()):
        for option in _shown(command):
            for name in option.opts:
                described = (option.envvar, isinstance(option.type, Duration))
                if name in seen and name not in ("-p",):
                    assert seen[name][1:] == described, f"{name}: {seen[name][0]} and {path} differ: {seen[name]} {described}"
                seen.setdefault(name, (path, *described))


def test_flinks_short_flags_resume_from_a_savepoint():
    with COMMANDS["run"].make_context("run", [JOB_FILE, "--bootstrap-servers", "k:9092", "--state-dir", "s",
                                              "--checkpoint-storage", "file:///c", "-s", "/sp", "-n"]) as ctx:
        assert ctx.params["from_savepoint"] == "/sp" and ctx.params["allow_non_restored_state"] is True


def _parse(path: str, args: list[str]) -> dict:
    with COMMANDS[path].make_context(path, args) as ctx:
        return dict(ctx.params)


def test_earlier_spellings_still_parse():
    run = _parse("run", [JOB_FILE, "--bootstrap-servers", "k:9092", "--group", "g1", "--state-dir", "s",
                         "--checkpoint-storage", "file:///c", "--checkpoint-interval", "500ms",
                         "--control-token", "t", "--from-savepoint", "/sp", "--allow-non-restored-state"])
    assert run["group"] == "g1" and run["checkpoint_interval"] == 0.5
    assert run["from_savepoint"] == "/sp" and run["allow_non_restored_state"]
    stop = _parse("savepoint stop", ["--job", "http://127.0.0.1:8081", "--job", "http://127.0.0.1:8082",
                                     "--timeout", "300", "--token", "t"])
    assert stop["legacy_jobs"] == ("http://127.0.0.1:8081", "http://127.0.0.1:8082") and stop["timeout"] == 300.0
    generated = _parse("generate", ["--bootstrap-servers", "k", "--topic", "t", "--event-time-step-ms", "250"])
    assert generated["event_time_step_ms"] == 250
    assert _parse("checkpoints list", ["file:///c", "--job", "g1"])["job"] == "g1"


def test_durations_accept_units_and_plain_seconds():
    assert DURATION.convert("1500ms", None, None) == 1.5
    assert DURATION.convert("2m", None, None) == 120.0
    assert DURATION.convert("30", None, None) == 30.0
    with pytest.raises(click.BadParameter):
        DURATION.convert("soon", None, None)


def test_the_log_level_works_after_the_subcommand(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["checkpoints", "list", str(tmp_path), "--log-level", "DEBUG"])
    assert "no such option" not in result.output
    assert "no checkpoints found" in result.output
