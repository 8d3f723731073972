"""Code shared by every Tenantry service: one home for each fact."""
