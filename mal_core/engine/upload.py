"""Copies of a job's output in S3 (``inference.output_uri``): an upload that is complete or absent."""

from __future__ import annotations

import os
from pathlib import Path

from mal_core.errors import DataError


def upload_file(path: Path, uri: str, field: str) -> str:
    """Upload ``path`` to ``s3://bucket/prefix/<file name>`` (endpoint from ``AWS_ENDPOINT_URL`` when set); returns
    the object's URI. S3 makes an object visible only once its upload completes, so no half-written copy is seen.
    :class:`DataError` naming ``field`` when the URI is malformed or the upload fails."""
    if not uri.startswith("s3://"):
        raise DataError(f"{field} {uri!r} must be an s3://bucket/prefix URI", field=field)
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    parts = [p for p in prefix.split("/") if p]
    if not bucket or any(p in (".", "..") for p in parts):
        raise DataError(f"{field} {uri!r} must name a bucket and a prefix without '.' or '..' parts", field=field)
    key = "/".join([*parts, path.name])
    import boto3  # lazy
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        client.upload_file(str(path), bucket, key)
    except (BotoCoreError, ClientError) as exc:
        raise DataError(f"{field}: cannot upload {path.name} to s3://{bucket}/{key}: {exc}", field=field) from exc
    return f"s3://{bucket}/{key}"
