"""``python -m tenant_service`` is ``tenantctl``."""

from tenant_service.cli import main

main()
