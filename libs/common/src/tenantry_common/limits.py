"""A tenant's limits: its plan's, overlaid with the tenant's own overrides.

The one place they are merged: the admin API's tenant object, the gateways' directory feed and the tenant's
Postgres connection limit all read the result of :func:`merged_limits`.
"""

from __future__ import annotations

from collections.abc import Mapping


def merged_limits(plan_limits: Mapping[str, object], overrides: Mapping[str, object]) -> dict[str, int]:
    """The plan's limits with the tenant's overrides on top, integers only.

    A plan may also carry settings that are not limits (``alert_thresholds``, ``placement_labels``, ...): they are
    left out, as is an override that is not an integer (it hides the plan's value rather than leaving a stale one).
    """
    merged = {**plan_limits, **overrides}
    return {name: value for name, value in merged.items() if isinstance(value, int) and not isinstance(value, bool)}
