"""``python -m gateway``: run the gateway."""

from gateway.server import main

main()
