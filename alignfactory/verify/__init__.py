"""Verifiers that stages and training share (math answers, ...). Importing this package is cheap:
sympy and math-verify load on first use inside the functions that need them."""
