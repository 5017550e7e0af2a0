"""Loads a user's job file: a Python module with `build(params) -> Job`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from service.api import Job, Params
from service.errors import ConfigurationError


def load_job(path: Path, params: dict[str, str]) -> Job:
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"job file {path} does not exist")
    module_name = f"eos_job_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"job file {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets pickled values of the job's classes resolve
    spec.loader.exec_module(module)
    build = getattr(module, "build", None)
    if not callable(build):
        raise ConfigurationError(f"job file {path} must define build(params) -> Job")
    job = build(Params(params))
    if not isinstance(job, Job):
        raise ConfigurationError(f"build() in {path} returned {type(job).__name__}, not a Job")
    return job
