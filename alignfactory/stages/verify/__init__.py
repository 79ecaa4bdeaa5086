"""Verification by execution in the sandbox: code tests (exec_feedback), constraint functions (autoif)."""
