"""SecretBox: AES-256-GCM with a key ring, bound to a context, rotatable."""

from __future__ import annotations

import base64

import pytest

from tenant_service.secretbox import DecryptionError, SecretBox, generate_key
from tenantry_common.settings import ConfigError

CTX = "tenant:00000000-0000-0000-0000-000000000001:db-password"
OTHER_CTX = "tenant:00000000-0000-0000-0000-000000000002:db-password"


def _box(spec: str) -> SecretBox:
    return SecretBox.from_config(spec)


@pytest.fixture
def keys() -> dict[str, str]:
    return {"k1": generate_key(), "k2": generate_key()}


def test_round_trip(keys: dict[str, str]) -> None:
    box = _box(f"k1:{keys['k1']}")
    token = box.encrypt("s3cret-password", CTX)
    assert box.decrypt(token, CTX) == "s3cret-password"
    assert "s3cret-password" not in token
    assert token.startswith("v1.k1.")


def test_each_encryption_uses_a_fresh_nonce(keys: dict[str, str]) -> None:
    box = _box(f"k1:{keys['k1']}")
    assert box.encrypt("same", CTX) != box.encrypt("same", CTX)


def test_wrong_context_fails(keys: dict[str, str]) -> None:
    box = _box(f"k1:{keys['k1']}")
    token = box.encrypt("pw", CTX)
    with pytest.raises(DecryptionError):
        box.decrypt(token, OTHER_CTX)


def test_unknown_kid_fails(keys: dict[str, str]) -> None:
    token = _box(f"k2:{keys['k2']}").encrypt("pw", CTX)
    with pytest.raises(DecryptionError, match="unknown key id"):
        _box(f"k1:{keys['k1']}").decrypt(token, CTX)


def test_same_kid_with_other_material_fails(keys: dict[str, str]) -> None:
    token = _box(f"k1:{keys['k1']}").encrypt("pw", CTX)
    with pytest.raises(DecryptionError):
        _box(f"k1:{keys['k2']}").decrypt(token, CTX)


@pytest.mark.parametrize("position", [0, 5, 12, 20, -1])
def test_tampering_fails(keys: dict[str, str], position: int) -> None:
    box = _box(f"k1:{keys['k1']}")
    version, kid, body = box.encrypt("pw-to-protect", CTX).split(".", 2)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[position] ^= 0x01
    tampered = f"{version}.{kid}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    with pytest.raises(DecryptionError):
        box.decrypt(tampered, CTX)


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "v1.k1", "v2.k1.AAAA", "v1.k1.!!!not-base64!!!", "v1.k1.AA", "v1..AAAA"],
)
def test_malformed_tokens_fail_cleanly(keys: dict[str, str], token: str) -> None:
    with pytest.raises(DecryptionError):
        _box(f"k1:{keys['k1']}").decrypt(token, CTX)


def test_truncated_ciphertext_fails(keys: dict[str, str]) -> None:
    box = _box(f"k1:{keys['k1']}")
    token = box.encrypt("pw", CTX)
    with pytest.raises(DecryptionError):
        box.decrypt(token[:-4], CTX)


def test_first_key_encrypts_and_every_key_decrypts(keys: dict[str, str]) -> None:
    old = _box(f"k1:{keys['k1']}")
    old_token = old.encrypt("old-pw", CTX)
    ring = _box(f"k2:{keys['k2']},k1:{keys['k1']}")
    assert ring.primary_kid == "k2"
    assert ring.decrypt(old_token, CTX) == "old-pw"
    new_token = ring.encrypt("new-pw", CTX)
    assert new_token.startswith("v1.k2.")
    assert _box(f"k2:{keys['k2']}").decrypt(new_token, CTX) == "new-pw"


def test_needs_rotation(keys: dict[str, str]) -> None:
    old_token = _box(f"k1:{keys['k1']}").encrypt("pw", CTX)
    ring = _box(f"k2:{keys['k2']},k1:{keys['k1']}")
    assert ring.needs_rotation(old_token)
    assert not ring.needs_rotation(ring.encrypt("pw", CTX))
    assert ring.needs_rotation("garbage")


@pytest.mark.parametrize(
    "spec",
    ["", " , ", "k1", "k1:", "k1:not base64!", "k1:" + base64.urlsafe_b64encode(b"short").decode(), "k-1:{key}"],
)
def test_bad_key_specs_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        SecretBox.from_config(spec.format(key=generate_key()))


def test_config_errors_never_echo_key_material() -> None:
    material = base64.urlsafe_b64encode(b"x" * 31).decode()
    with pytest.raises(ConfigError) as excinfo:
        SecretBox.from_config(f"k1:{material}")
    assert material not in str(excinfo.value)
