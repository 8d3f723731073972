"""Plans: named sets of limits that tenants reference."""
