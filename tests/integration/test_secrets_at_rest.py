"""Secrets at rest: the registry holds only ciphertext bound to its tenant, keys rotate without downtime, and
Postgres holds a SCRAM verifier of exactly the vended password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from support.platform import Installation, TenantServiceProcess, in_process
from tenant_service.context import AppContext
from tenant_service.provisioning.cluster import TenantCluster
from tenant_service.provisioning.names import object_marker
from tenant_service.provisioning.scram import scram_sha256_verifier
from tenant_service.secretbox import SecretBox, generate_key

# --- helpers ----------------------------------------------------------------------------------------


async def create(client: Any, slug: str) -> dict[str, Any]:
    response = await client.post("/admin/tenants", json={"slug": slug, "name": slug.title()})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def vend_response(client: Any, inst: Installation, tenant_id: str) -> Any:
    return await client.get(
        f"/internal/v1/tenants/{tenant_id}/database", headers={"Authorization": f"Bearer {inst.service_token}"}
    )


async def vend(client: Any, inst: Installation, tenant_id: str) -> dict[str, Any]:
    response = await vend_response(client, inst, tenant_id)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def registry_fetch(inst: Installation, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(inst.database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def stored_ciphertexts(inst: Installation) -> dict[str, str]:
    rows = await registry_fetch(inst, "SELECT slug, db_password_enc FROM tenants")
    return {r["slug"]: r["db_password_enc"] for r in rows}


async def vend_count(inst: Installation, tenant_id: str) -> int:
    rows = await registry_fetch(
        inst,
        "SELECT count(*) FROM audit_log WHERE action = 'credentials.vend' AND tenant_id = $1::uuid",
        tenant_id,
    )
    return int(rows[0][0])


def scram_matches(password: str, verifier: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (as in pg_authid.rolpassword) accepts ``password``."""
    method, _, rest = verifier.partition("$")
    iterations_salt, _, keys = rest.partition("$")
    iterations, _, salt = iterations_salt.partition(":")
    stored_key, _, server_key = keys.partition(":")
    if method != "SCRAM-SHA-256":
        return False
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key)) and (
        hmac.compare_digest(hmac.new(salted, b"Server Key", hashlib.sha256).digest(), base64.b64decode(server_key))
    )


async def role_verifier(pg_url: str, role: str) -> str | None:
    conn = await asyncpg.connect(pg_url)
    try:
        value: str | None = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        return value
    finally:
        await conn.close()


async def assert_login(creds: dict[str, Any], pg_url: str) -> None:
    dsn = f"postgresql://{creds['user']}:{creds['password']}@{creds['host']}:{creds['port']}/{creds['database']}"
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == creds["database"]
    finally:
        await conn.close()
    verifier = await role_verifier(pg_url, creds["user"])
    assert verifier is not None
    assert scram_matches(creds["password"], verifier)


# --- ciphertext only --------------------------------------------------------------------------------


async def test_registry_holds_only_ciphertext_bound_to_the_tenant(
    api: Any, installation: Installation, pg_url: str
) -> None:
    tenant = await create(api, "cc-sec-alpha")
    creds = await vend(api, installation, tenant["id"])
    password = creds["password"]
    assert len(password) >= 32

    (row,) = await registry_fetch(installation, "SELECT * FROM tenants WHERE id = $1::uuid", tenant["id"])
    stored = row["db_password_enc"]
    assert stored.startswith("v1.k1.")
    assert password not in stored
    for column, value in row.items():
        assert password not in str(value), column
    # It is the ciphertext of exactly the vended password, bound to this tenant.
    box = SecretBox.from_config(installation.encryption_keys)
    assert box.decrypt(stored, f"tenant:{tenant['id']}:db-password") == password
    dump = await registry_fetch(
        installation,
        "SELECT (SELECT string_agg(t::text, '|') FROM tenants t) AS tenants,"
        " (SELECT string_agg(a::text, '|') FROM audit_log a) AS audit",
    )
    assert password not in dump[0]["tenants"]
    assert password not in dump[0]["audit"]
    # Nor does any admin answer carry it.
    for path in (f"/admin/tenants/{tenant['id']}", "/admin/tenants?q=cc-sec", f"/admin/audit?tenant={tenant['id']}"):
        response = await api.get(path)
        assert response.status_code == 200, (path, response.text)
        assert password not in response.text
        assert stored not in response.text
    # Postgres holds a SCRAM verifier, not the password.
    verifier = await role_verifier(pg_url, creds["user"])
    assert verifier is not None
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert password not in verifier
    await assert_login(creds, pg_url)


async def test_a_ciphertext_moved_to_another_tenant_does_not_vend(api: Any, installation: Installation) -> None:
    a = await create(api, "cc-sec-swap-a")
    b = await create(api, "cc-sec-swap-b")
    pa = (await vend(api, installation, a["id"]))["password"]
    pb = (await vend(api, installation, b["id"]))["password"]
    original = await stored_ciphertexts(installation)
    vends_before = {t["id"]: await vend_count(installation, t["id"]) for t in (a, b)}

    swap = "UPDATE tenants SET db_password_enc = $2 WHERE slug = $1"
    conn = await asyncpg.connect(installation.database_url)
    try:
        await conn.execute(swap, "cc-sec-swap-a", original["cc-sec-swap-b"])
        await conn.execute(swap, "cc-sec-swap-b", original["cc-sec-swap-a"])
        for tenant in (a, b):
            response = await vend_response(api, installation, tenant["id"])
            assert response.status_code == 500, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["code"] == "secret_unreadable"
            for secret in (pa, pb, original["cc-sec-swap-a"], original["cc-sec-swap-b"]):
                assert secret not in response.text
            for leak in ("InvalidTag", "Traceback", "k1"):
                assert leak not in response.text
        # A failed vend is not recorded as a vend.
        assert {t["id"]: await vend_count(installation, t["id"]) for t in (a, b)} == vends_before

        # Tampered, truncated, or under an unknown key: the same clean answer.
        box = SecretBox.from_config(installation.encryption_keys)
        foreign_key = SecretBox.from_config(f"k9:{generate_key()}")
        context = f"tenant:{a['id']}:db-password"
        genuine = original["cc-sec-swap-a"]
        flipped = genuine[:-2] + ("A" if genuine[-2] != "A" else "B") + genuine[-1]
        for bad in (flipped, genuine[:20], foreign_key.encrypt(pa, context), "not a ciphertext"):
            await conn.execute(swap, "cc-sec-swap-a", bad)
            response = await vend_response(api, installation, a["id"])
            assert response.status_code == 500, response.text
            assert response.json()["code"] == "secret_unreadable"
            assert pa not in response.text
        assert box.decrypt(genuine, context) == pa
    finally:
        await conn.execute(swap, "cc-sec-swap-a", original["cc-sec-swap-a"])
        await conn.execute(swap, "cc-sec-swap-b", original["cc-sec-swap-b"])
        await conn.close()
    # Put back, each vends its own password again.
    assert (await vend(api, installation, a["id"]))["password"] == pa
    assert (await vend(api, installation, b["id"]))["password"] == pb


# --- key rotation -----------------------------------------------------------------------------------


async def test_encryption_key_rotation(fresh_installation: Installation, tmp_path: Path, pg_url: str) -> None:
    inst = fresh_installation
    old = inst.encryption_keys
    assert old.startswith("k1:")
    new = f"k2:{generate_key()}"
    both = f"{new},{old}"

    async with in_process(inst) as (client, _):
        a = await create(client, "cc-rot-a")
        b = await create(client, "cc-rot-b")
        passwords = {t["id"]: (await vend(client, inst, t["id"]))["password"] for t in (a, b)}
    before = await stored_ciphertexts(inst)
    assert all(v.startswith("v1.k1.") for v in before.values())

    # Step 1: the new key first, the old one still there. Old tenants still vend; new ones get the new key.
    service = TenantServiceProcess(inst, tmp_path / "both.log", env={"ENCRYPTION_KEYS": both}).start()
    try:
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {inst.admin_token}"}
        ) as c:
            for tenant_id, password in passwords.items():
                assert (await vend(c, inst, tenant_id))["password"] == password
            c_tenant = await create(c, "cc-rot-c")
            passwords[c_tenant["id"]] = (await vend(c, inst, c_tenant["id"]))["password"]
    finally:
        service.stop()
    mixed = await stored_ciphertexts(inst)
    assert mixed["cc-rot-c"].startswith("v1.k2.")
    assert mixed["cc-rot-a"] == before["cc-rot-a"]

    # Step 2: re-encrypt everything with the primary key.
    result = inst.tenantctl("rotate-encryption", env={"ENCRYPTION_KEYS": both})
    assert "re-encrypted 2 secret(s) with key k2" in result.stdout
    for password in passwords.values():
        assert password not in result.stdout + result.stderr
    after = await stored_ciphertexts(inst)
    assert all(v.startswith("v1.k2.") for v in after.values()), after
    assert after["cc-rot-a"] != before["cc-rot-a"]
    assert after["cc-rot-c"] == mixed["cc-rot-c"]

    # Step 3: the old key is gone; everything still vends, and the passwords did not change.
    async with in_process(inst, ENCRYPTION_KEYS=new) as (client, _):
        for tenant_id, password in passwords.items():
            creds = await vend(client, inst, tenant_id)
            assert creds["password"] == password
        await assert_login(creds, pg_url)
    for password in passwords.values():
        assert password not in (tmp_path / "both.log").read_text()

    # And the old key alone can no longer read them: they really were re-encrypted.
    async with in_process(inst, ENCRYPTION_KEYS=old) as (client, _):
        response = await vend_response(client, inst, a["id"])
        assert response.status_code == 500
        assert response.json()["code"] == "secret_unreadable"


# --- SCRAM verifiers in Postgres --------------------------------------------------------------------


async def test_role_made_with_a_local_scram_verifier_logs_in(
    ctx: AppContext, installation: Installation, pg_url: str
) -> None:
    cluster = TenantCluster(ctx.settings.database)
    role = f"{installation.prefix}cc_scram_{uuid.uuid4().hex[:8]}"
    password = "correct horse battery staple"
    marker = object_marker(uuid.uuid4(), uuid.uuid4())
    await cluster.ensure_role(role, password, 2, marker)
    try:
        verifier = await role_verifier(pg_url, role)
        assert verifier is not None
        # Postgres stored our verifier as is (it did not see, hash or log a plaintext password).
        assert verifier.startswith("SCRAM-SHA-256$4096:")
        assert password not in verifier
        assert scram_matches(password, verifier)
        assert not scram_matches(password + "!", verifier)
        assert verifier != scram_sha256_verifier(password)  # salted per call
        # Roles get no CONNECT on the maintenance database (the tenant-service revokes PUBLIC's): grant it here.
        admin = await asyncpg.connect(pg_url)
        try:
            maintenance = await admin.fetchval("SELECT current_database()")
            await admin.execute(f'GRANT CONNECT ON DATABASE "{maintenance}" TO "{role}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(pg_url, user=role, password=password)
        try:
            assert await conn.fetchval("SELECT current_user") == role
            assert await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = current_user")
        finally:
            await conn.close()
        # Ensuring again (a resumed provisioning) re-sets the verifier; the password still works.
        await cluster.ensure_role(role, password, 2, marker)
        again = await role_verifier(pg_url, role)
        assert again is not None
        assert again != verifier
        assert scram_matches(password, again)
    finally:
        admin = await asyncpg.connect(pg_url)
        try:
            maintenance = await admin.fetchval("SELECT current_database()")
            await admin.execute(f'REVOKE ALL ON DATABASE "{maintenance}" FROM "{role}"')
        finally:
            await admin.close()
        await cluster.drop_role(role)
    assert await role_verifier(pg_url, role) is None
