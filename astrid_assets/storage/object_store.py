"""S3-compatible object stores: connection options, a filesystem, clear errors.

Production keeps images and tables in a bucket of any S3-compatible store
(AWS S3, Cloudflare R2, SeaweedFS, MinIO) through fsspec's ``s3fs``. Two
settings matter for R2: the region is ``auto``, and boto3 (since 1.36)
adds checksums to every request, which R2 rejects, unless checksums are
asked for only ``when_required``.

Keys are given as :class:`dagster.EnvVar` (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), so Dagster keeps only the variables' names in a
run's configuration. Failures of the store become a :class:`StorageError`
that names the object, the endpoint and what went wrong (refused
credentials, unreachable endpoint), and never a key.
"""

from __future__ import annotations

from typing import Any

from dagster import Config
from pydantic import Field

__all__ = [
    "S3Options",
    "StorageError",
    "is_remote",
    "storage_error",
]

REMOTE_PROTOCOLS = ("s3", "s3a")


def is_remote(root: str) -> bool:
    """Whether ``root`` is an object store URL rather than a local directory."""
    protocol, sep, _ = str(root).partition("://")
    return bool(sep) and protocol in REMOTE_PROTOCOLS


class S3Options(Config):
    """Where an S3-compatible store is and how to sign in to it."""

    endpoint_url: str | None = Field(
        default=None,
        description="https://ACCOUNT.r2.cloudflarestorage.com for R2; None: AWS S3.",
    )
    region: str = Field(default="auto", description="'auto' for R2.")
    access_key_id: str | None = Field(
        default=None, description="Give as EnvVar('AWS_ACCESS_KEY_ID'); None: boto3's chain."
    )
    secret_access_key: str | None = Field(
        default=None, description="Give as EnvVar('AWS_SECRET_ACCESS_KEY')."
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    retries: int = Field(
        default=4, ge=0, description="boto3's retries of a failed request before giving up."
    )

    def fsspec_options(self) -> dict[str, Any]:
        """Options for ``s3fs.S3FileSystem`` (and ``UPath``)."""
        options: dict[str, Any] = {
            "client_kwargs": {"region_name": self.region},
            "config_kwargs": {
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
                "connect_timeout": self.connect_timeout,
                "retries": {"max_attempts": self.retries + 1, "mode": "standard"},
            },
        }
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.access_key_id:
            options["key"] = self.access_key_id
        if self.secret_access_key:
            options["secret"] = self.secret_access_key
        return options

    def filesystem(self) -> Any:
        """An ``s3fs.S3FileSystem`` on this store (instances are cached by fsspec)."""
        import s3fs

        return s3fs.S3FileSystem(**self.fsspec_options())

    def where(self) -> str:
        """The endpoint, for messages: never a key."""
        return self.endpoint_url or f"AWS S3 ({self.region})"


class StorageError(RuntimeError):
    """The object store could not read or write an object."""


_CREDENTIAL_CODES = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
)


def _code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return seen


def _reason(err: BaseException) -> str:
    chain = _chain(err)
    text = " ".join(f"{type(e).__name__} {e} {_code(e)}" for e in chain)
    if any(isinstance(e, PermissionError) for e in chain) or any(
        code in text for code in _CREDENTIAL_CODES
    ):
        return (
            "refused the credentials (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "and that the key may use this bucket)"
        )
    unreachable = ("EndpointConnectionError", "ConnectTimeout", "ClientConnector", "Connection")
    if any(any(word in type(e).__name__ for word in unreachable) for e in chain) or any(
        isinstance(e, ConnectionError | TimeoutError) for e in chain
    ):
        return "could not be reached (is the server up and ASTRID_S3_ENDPOINT_URL right?)"
    if any(isinstance(e, FileNotFoundError) for e in chain) or "NoSuchBucket" in text:
        return "has no such object or bucket"
    return "failed"


def storage_error(action: str, path: Any, where: str, err: BaseException) -> StorageError:
    """A :class:`StorageError` for ``action`` ('read', 'write') of ``path`` at ``where``."""
    detail = str(err).strip() or type(err).__name__
    return StorageError(
        f"could not {action} {path}: the object store at {where} {_reason(err)}: {detail}"
    )
