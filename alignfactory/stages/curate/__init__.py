"""Curation: tagging, tag normalization, selection, dedup, decontamination, evolution."""
