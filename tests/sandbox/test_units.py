"""Pieces that need no sandbox: static flags, strict comparison, wire encoding, job validation, argv."""

import pytest

from sandbox import Case, Job
from sandbox.compare import Opaque, decode, stdout_matches, strict_equal
from sandbox.forkserver import encode, pack_frame, split_frames
from sandbox.static_checks import flags


@pytest.mark.parametrize(
    "code, expected_flag",
    [
        ("import sys\nsys.exit(0)", "exits early (sys.exit)"),
        ("import os\nos._exit(0)", "exits early (os._exit)"),
        ("import builtins\nbuiltins.print = None", "patches builtins.print"),
        ("__builtins__['len'] = lambda x: 3", "patches __builtins__[...]"),
        (
            "import unittest\nunittest.TestCase.assertEqual = lambda *a: None",
            "patches unittest.TestCase.assertEqual",
        ),
        ("class A:\n    def __eq__(self, o):\n        return True", "constant __eq__"),
        ("src = open(__file__).read()", "reads its own source"),
        ("import ctypes", "imports ctypes"),
        ("import atexit", "imports atexit"),
        ("from signal import signal", "imports signal"),
        ("import sys\nsys._getframe(1).f_locals['x'] = 1", "introspection or raw fd access (sys._getframe)"),
        ("import os\nos.write(3, b'x')", "introspection or raw fd access (os.write)"),
    ],
)
def test_static_flags(code, expected_flag):
    assert expected_flag in flags(code)


def test_clean_and_unparseable_code_has_no_flags():
    assert (
        flags(
            "def f(x):\n    return sorted(x)\nclass P:\n    def __eq__(self, o):\n        return self.v == o.v"
        )
        == []
    )
    assert flags("def f(:") == []


def test_strict_equal_rules():
    assert strict_equal(1, 1) and not strict_equal(True, 1) and not strict_equal(1, 1.0)
    assert strict_equal((1, [2, (3,)]), [1, [2, [3]]])
    assert not strict_equal({"a": 1}, {"a": True})
    assert strict_equal({1, 2}, {2, 1}) and not strict_equal({1}, {True})
    assert not strict_equal(Opaque("Any", "<Any>"), Opaque("Any", "<Any>"))
    assert strict_equal(1.0 + 1e-12, 1.0, float_tol=1e-9) and not strict_equal(1.0 + 1e-12, 1.0)


def test_wire_round_trip_keeps_types():
    value = [
        1,
        True,
        1.5,
        float("inf"),
        "s",
        None,
        (1, 2),
        {"k": {3: "x"}},
        {1, 2},
        frozenset([3]),
        b"\x00\xff",
        1 + 2j,
        {"$x": 1},
    ]
    back = decode(encode(value))
    assert back[:6] == value[:6] and type(back[6]) is tuple and back[7] == {"k": {3: "x"}}
    assert back[8:] == value[8:]
    assert isinstance(decode(encode(object())), Opaque)
    frames, ok = split_frames(pack_frame({"a": 1}) + pack_frame([2]) + b"\x00\x00")
    assert frames == [{"a": 1}, [2]] and not ok


def test_stdout_policies():
    assert stdout_matches("a  \nb\n\n", "a\nb", "strip_trailing")
    assert not stdout_matches("a  \nb\n", "a\nb", "exact")
    assert stdout_matches("1\n2 3", "1 2\n3", "tokens")
    assert not stdout_matches(" a", "a", "strip_trailing")  # leading whitespace is significant


def test_job_validation_messages():
    with pytest.raises(ValueError, match="not supported yet"):
        Job(code="", language="rust").validate()
    with pytest.raises(ValueError, match="kind"):
        Job(code="", kind="fuzz").validate()
    with pytest.raises(ValueError, match="Case.code"):
        Job(code="", kind="assert", tests=[Case()]).validate()
    with pytest.raises(ValueError, match="Case.expected"):
        Job(code="", kind="call", entry_point="f", tests=[Case(args=[1])]).validate()


def test_server_argv_has_every_isolation_flag():
    from sandbox.isolation import server_argv

    argv = server_argv(
        {"setpriv": "/usr/bin/setpriv", "bwrap": "/usr/bin/bwrap", "python": "/usr/bin/python3.11"},
        61000,
        64,
        5,
    )
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--disable-userns"):
        assert flag in argv
    assert argv[:5] == ["/usr/bin/setpriv", "--reuid=61000", "--regid=61000", "--clear-groups", "--"]
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "/etc" not in argv and "/home" not in argv and "/root" not in argv
