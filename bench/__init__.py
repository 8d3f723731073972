"""``make bench``: Tenantry measured side by side with nginx and raw PostgreSQL on the local machine.

Run ``python -m bench --help`` (or ``make bench ARGS="--help"``) for the options; docs/benchmarks.md describes
what each section measures.
"""
