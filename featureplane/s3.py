"""S3 for the offline store: Sail, delta-rs and pyarrow configured from the AWS environment.

All three build their own S3 client from the process environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL`), so an `s3://` offline root needs nothing else set; `configure_s3` fills in
the two things they would otherwise leave to chance:

- Delta commits are created with S3 conditional writes (`If-None-Match: *`,
  `AWS_CONDITIONAL_PUT=etag`): of two writers committing the same table version, S3 lets one
  in and the other commits again after it, so concurrent writers never lose a version. Sail
  (object_store `PutMode::Create`) and delta-rs 1.x, which dropped its DynamoDB lock for
  exactly this, commit that way, so either may write a table while the other does. A setting
  that would commit otherwise (another `AWS_CONDITIONAL_PUT`, a DynamoDB locking provider or
  unsafe renames, which these engines no longer honour) is refused.
- A plain-HTTP endpoint is allowed when it is on this machine (moto, MinIO on 127.0.0.1);
  a remote one must be HTTPS, or `AWS_ALLOW_HTTP=true` set deliberately.

JVM Spark takes the same environment through S3A, and commits to Delta on S3 the same way, with
a log store of featureplane's (`featureplane.s3a`).
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlparse

from featureplane.errors import SettingError

ENDPOINTS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
UNSAFE = {
    "AWS_S3_LOCKING_PROVIDER": "delta-rs 1.x and Sail ignore it",
    "AWS_S3_ALLOW_UNSAFE_RENAME": "commits would not be exclusive",
}
STATUS = re.compile(r"\b([45]\d\d) ([A-Z][A-Za-z ]+)")


def endpoint() -> str | None:
    """The S3 endpoint the environment names, if any (the most specific variable wins)."""
    return next((os.environ[name] for name in ENDPOINTS if os.environ.get(name)), None)


def configure_s3() -> None:
    """Set this process's S3 environment for Delta on S3 (see the module docstring); what the
    user set is kept, or refused with a SettingError where it would make commits unsafe."""
    for name, why in UNSAFE.items():
        if os.environ.get(name):
            raise SettingError(
                f"{name} is set, but featureplane commits to S3 with conditional writes "
                f"(If-None-Match) and {why}: unset it"
            )
    put = os.environ.setdefault("AWS_CONDITIONAL_PUT", "etag")
    if put != "etag":
        raise SettingError(
            f"AWS_CONDITIONAL_PUT must be 'etag' (S3 conditional writes make concurrent Delta "
            f"commits safe), got {put!r}"
        )
    url = endpoint()
    if url and urlparse(url).scheme == "http" and urlparse(url).hostname in LOCAL_HOSTS:
        os.environ.setdefault("AWS_ALLOW_HTTP", "true")
    if os.environ.get("AWS_DEFAULT_REGION"):
        os.environ.setdefault("AWS_REGION", os.environ["AWS_DEFAULT_REGION"])


def unreachable(uri: str, error: Exception) -> str:
    """One line for an S3 error of `uri`: the bucket, and what S3 answered."""
    bucket = urlparse(uri).netloc
    found = STATUS.search(str(error))
    answer = f"S3 answered {found.group(1)} {found.group(2).strip()}" if found else str(error)
    answer = answer.splitlines()[0]
    return (
        f"{uri}: cannot reach bucket {bucket!r} ({answer}); check that it exists and that "
        "the AWS credentials, region and AWS_ENDPOINT_URL are right"
    )
