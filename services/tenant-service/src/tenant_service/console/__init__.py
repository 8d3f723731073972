"""The admin console: server-rendered pages for platform admins under ``/console`` (docs/console.md)."""
