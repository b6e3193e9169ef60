"""HTTP layer: Flask blueprints with thin views (parse → call → serialise)."""
