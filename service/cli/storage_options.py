"""The flags that say how to reach checkpoint storage, shared by `eos run` and
`eos checkpoints`.

Secrets never travel on the command line (where `ps` shows them): access keys come
from the usual AWS variables, a profile, or a credentials file named here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from statestore.storage import S3Settings


def s3_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the --s3-* flags and hands the command one `s3: S3Settings` argument."""

    @click.option("--s3-endpoint-url", default=None,
                  help="S3-compatible endpoint, e.g. http://minio:9000 (default: "
                       "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS).")
    @click.option("--s3-region", default=None, help="Region (default: AWS_REGION / AWS_DEFAULT_REGION).")
    @click.option("--s3-profile", default=None,
                  help="Profile in the AWS shared files, or section of --s3-credentials-file.")
    @click.option("--s3-credentials-file", default=None,
                  type=click.Path(path_type=Path, exists=True, dir_okay=False),
                  help="File in the AWS credentials format (aws_access_key_id, "
                       "aws_secret_access_key); wins over AWS_* variables.")
    @functools.wraps(command)
    def wrapper(*args: Any, s3_endpoint_url: str | None, s3_region: str | None,
                s3_profile: str | None, s3_credentials_file: Path | None, **kwargs: Any) -> Any:
        settings = S3Settings(endpoint_url=s3_endpoint_url, region=s3_region, profile=s3_profile,
                              credentials_file=s3_credentials_file)
        return command(*args, s3=settings, **kwargs)

    return wrapper
