"""Assembly: filters, preference pairs, export."""
