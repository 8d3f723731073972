"""The example tenant app: notes, stored in each tenant's own database."""
