"""The audit log of every admin change and credential vend."""
