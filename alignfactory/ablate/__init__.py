"""alignfactory ablate: compare pipeline variants on the same eval items, with honest statistics."""
