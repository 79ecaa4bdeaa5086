"""Synthesis: generation, rejection sampling, judges, reward models, constitution, repurposing."""
