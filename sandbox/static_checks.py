"""Static red flags in candidate code: ways to make assert-style tests pass without solving anything.

Used as weak evidence only: an assert-style job that passes with any flag becomes SUSPICIOUS. For
call and stdio jobs (compared outside the sandbox) the flags are reported but change nothing.
"""

from __future__ import annotations

import ast
import functools

EXIT_CALLS = {
    "sys.exit",
    "exit",
    "quit",
    "os._exit",
    "os.abort",
    "os.kill",
    "os.killpg",
    "signal.raise_signal",
}
INTROSPECTION = {
    "sys._getframe", "inspect.getsource", "inspect.stack", "inspect.currentframe", "gc.get_objects",
    "gc.get_referrers", "sys.settrace", "sys.setprofile", "os.write", "os.fdopen", "os.dup2",
}  # fmt: skip
TRICK_MODULES = {"ctypes", "signal", "atexit", "gc", "inspect", "faulthandler", "unittest.mock", "builtins"}
PATCH_TARGETS = {"builtins", "__builtins__", "unittest", "sys", "TestCase", "os", "atexit"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _constant_eq(fn: ast.FunctionDef) -> bool:
    """`def __eq__(self, other): return True` (or any body whose every return is a constant)."""
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    return bool(returns) and all(isinstance(r.value, ast.Constant) for r in returns)


def flags(code: str) -> list[str]:
    """Sorted, de-duplicated findings; [] for clean or unparseable code (a SyntaxError fails anyway)."""
    return list(_flags(code))


@functools.lru_cache(maxsize=256)  # the same solution is often run again (other tests, retries, CodeT)
def _flags(code: str) -> tuple[str, ...]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in EXIT_CALLS or name.endswith(("._exit", ".exit")) and name.startswith(("os", "sys")):
                found.add(f"exits early ({name})")
            if name in INTROSPECTION:
                found.add(f"introspection or raw fd access ({name})")
            if name == "open" and node.args and _reads_own_source(node.args[0]):
                found.add("reads its own source")
            if (
                name in ("setattr", "delattr")
                and node.args
                and _dotted(node.args[0]).split(".")[0] in PATCH_TARGETS
            ):
                found.add(f"patches {_dotted(node.args[0])}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m in TRICK_MODULES or m.split(".")[0] in ("ctypes", "atexit", "signal"):
                    found.add(f"imports {m}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                name = _dotted(t) if isinstance(t, ast.Attribute) else ""
                root = name.split(".")[0]
                if root in PATCH_TARGETS or ".assert" in name or name.startswith("__builtins__"):
                    found.add(f"patches {name}")
                if isinstance(t, ast.Subscript) and _dotted(t.value) in (
                    "__builtins__",
                    "sys.modules",
                    "builtins.__dict__",
                ):
                    found.add(f"patches {_dotted(t.value)}[...]")
        elif isinstance(node, ast.FunctionDef) and node.name in ("__eq__", "__ne__", "__hash__"):
            if _constant_eq(node):
                found.add(f"constant {node.name}")
        elif isinstance(node, ast.Name) and node.id == "__file__":
            found.add("reads its own source (__file__)")
    return tuple(sorted(found))


def _reads_own_source(arg: ast.AST) -> bool:
    text = ast.unparse(arg)
    return "__file__" in text or "argv" in text or "/proc/self" in text
