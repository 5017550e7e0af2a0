"""Loads a user's job file: a Python module with `build(params) -> Job`.

The job file's directory comes first on `sys.path`, as it does for `python job.py`, so a
job may import the modules beside it (`from running_sum import add_order`) wherever the
worker is started from.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from eos.errors import ConfigurationError
from service.job.api import Job, Params


def load_job(path: Path, params: dict[str, str]) -> Job:
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"job file {path} does not exist")
    job_dir = str(path.resolve().parent)
    if job_dir not in sys.path:
        sys.path.insert(0, job_dir)
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
