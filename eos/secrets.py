"""Secrets named by reference: `@env:VAR` and `@file:PATH`.

Settings that carry passwords (SASL, TLS keys, a schema registry's credentials) take a
reference instead of the secret, so the secret never shows in `ps`, in logs, or in the
job parameters a savepoint records. At the bottom of the layers, beside errors.py, so
every layer that reads settings resolves them alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from eos.errors import ConfigurationError

SECRET_PREFIXES = ("@env:", "@file:")


def is_reference(value: str) -> bool:
    return value.startswith(SECRET_PREFIXES)


def resolve(value: str, what: str) -> str:
    """The value a reference names (a plain value is itself); `what` names the setting
    in errors."""
    if value.startswith("@env:"):
        var = value[len("@env:"):]
        if var not in os.environ:
            raise ConfigurationError(f"{what}: environment variable {var} is not set")
        return os.environ[var]
    if value.startswith("@file:"):
        path = Path(value[len("@file:"):])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"{what}: cannot read {path}: {exc.strerror}") from None
    return value
