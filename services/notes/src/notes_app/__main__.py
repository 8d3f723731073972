"""``python -m notes_app``: serve the notes app on APP_PORT (default 8002)."""

import uvicorn

from tenantry_common.settings import env_int, env_str

uvicorn.run(
    "notes_app.app:create_app",
    factory=True,
    host=env_str("APP_HOST", "127.0.0.1"),
    port=env_int("APP_PORT", 8002, minimum=0, maximum=65535),
    loop="uvloop",
    http="httptools",
    access_log=False,
    log_config=None,
    server_header=False,
)
