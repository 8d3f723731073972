"""BACKUP_STORE_URL and the S3 settings (contract §10): what is accepted, and what stops the service at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_service.backups.store import (
    DEFAULT_STORE_URL,
    FileLocation,
    FileStore,
    S3Location,
    S3Store,
    StoreSettings,
    open_store,
    parse_store_url,
)
from tenantry_common.settings import ConfigError

STORE_VARIABLES = ("BACKUP_STORE_URL", "S3_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in STORE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def test_without_configuration_backups_go_to_a_local_directory() -> None:
    settings = StoreSettings.from_env()
    assert settings.url == DEFAULT_STORE_URL == "file:///var/lib/tenantry/backups"
    assert settings.s3_region == "us-east-1"
    store = open_store(settings)
    assert isinstance(store, FileStore)
    assert store.root == Path("/var/lib/tenantry/backups")
    await store.close()


async def test_an_s3_url_with_its_settings_opens_an_s3_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_STORE_URL", "s3://tenantry-backups/prod/eu")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("S3_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    settings = StoreSettings.from_env()
    assert "very-secret" not in repr(settings)
    store = open_store(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("tenantry-backups", "prod/eu/")
    await store.close()


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("file:///srv/backups", FileLocation(Path("/srv/backups"))),
        ("file://localhost/srv/backups/", FileLocation(Path("/srv/backups"))),
        ("file:///srv/my%20backups", FileLocation(Path("/srv/my backups"))),
        ("s3://bucket", S3Location("bucket", "")),
        ("s3://bucket/", S3Location("bucket", "")),
        ("s3://my.bucket-1/a/b/", S3Location("my.bucket-1", "a/b/")),
    ],
)
def test_accepted_store_urls(url: str, location: FileLocation | S3Location) -> None:
    assert parse_store_url(url) == location


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "unsupported scheme"),
        ("/var/backups", "unsupported scheme"),
        ("file://var/backups", "names a host"),
        ("file:///", "absolute directory"),
        ("file:///var/../etc", "'.' or '..'"),
        ("https://bucket.s3.amazonaws.com/x", "unsupported scheme"),
        ("s3://", "not a valid bucket name"),
        ("s3://Upper_Case", "not a valid bucket name"),
        ("s3://key:secret@bucket/x", "takes no credentials"),
        ("s3://bucket/../x", "prefix"),
        ("s3://bucket/a b", "prefix"),
        ("s3://bucket/x?versionId=1", "query"),
    ],
)
def test_an_invalid_store_url_is_refused_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="BACKUP_STORE_URL") as raised:
        parse_store_url(url)
    assert message in str(raised.value)


def test_an_invalid_store_url_in_the_environment_stops_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_STORE_URL", "file://relative/path")
    with pytest.raises(ConfigError, match="use file:///absolute/path or s3://bucket/prefix"):
        StoreSettings.from_env()


def test_only_one_of_the_two_aws_variables_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_STORE_URL", "s3://bucket/x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "access")
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        StoreSettings.from_env()


def test_an_endpoint_that_is_not_an_http_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "minio:9000")
    with pytest.raises(ConfigError, match="S3_ENDPOINT_URL"):
        StoreSettings.from_env()
