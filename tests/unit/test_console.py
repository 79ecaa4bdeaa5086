"""alignfactory.console: INFO and workers' output go to <run>/run.log; the console keeps warnings (and
progress lines, written by Progress itself); -v keeps everything on the console as before."""

import io
import logging

import pytest

from alignfactory import console


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    yield stream
    if console._file_handler is not None:
        console._file_handler.close()
        console._file_handler = None
    root.handlers, root.level = saved


@pytest.fixture
def ray_dispatcher():
    from ray._private import worker as ray_worker

    d = ray_worker.global_worker_stdstream_dispatcher
    saved = d.handlers[:]
    printed = []
    d.handlers = [("ray_print_logs", printed.append)]  # what ray.init(log_to_driver=True) installs
    yield d, printed
    d.handlers = saved


def test_info_goes_to_the_run_log_and_warnings_to_both(root_logging, tmp_path):
    path = console.attach_run_log(tmp_path / "runs" / "x", verbose=False)
    log = logging.getLogger("alignfactory")
    log.info("instag: rows_in=8")
    log.warning("stopped: budget")
    text = path.read_text("utf-8")
    assert path == tmp_path / "runs" / "x" / "run.log"
    assert "instag: rows_in=8" in text and "stopped: budget" in text
    assert "rows_in" not in root_logging.getvalue() and "stopped: budget" in root_logging.getvalue()


def test_verbose_keeps_info_on_the_console(root_logging, tmp_path):
    path = console.attach_run_log(tmp_path, verbose=True)
    logging.getLogger("alignfactory").info("evolve: rows_in=4")
    assert "evolve: rows_in=4" in root_logging.getvalue() and "evolve: rows_in=4" in path.read_text()


def test_worker_output_is_routed_to_the_run_log(root_logging, ray_dispatcher, tmp_path):
    dispatcher, printed = ray_dispatcher
    path = console.attach_run_log(tmp_path, verbose=False)
    assert console.route_worker_output(verbose=False)
    batch = {"lines": ["Loading weights: 100%|###| 272/272"], "pid": 4242, "actor_name": "StageWorker"}
    dispatcher.emit(batch)
    assert printed == []  # Ray's console printer is gone
    assert "(StageWorker pid=4242) Loading weights: 100%" in path.read_text("utf-8")
    assert "Loading weights" not in root_logging.getvalue()
    dispatcher.emit({"lines": ["Pending Demands:", " (no resource demands)"], "pid": "autoscaler"})
    assert "Pending Demands" not in path.read_text("utf-8")  # the autoscaler's status dump: events only


def test_verbose_leaves_rays_printer_alone(root_logging, ray_dispatcher, tmp_path):
    dispatcher, printed = ray_dispatcher
    console.attach_run_log(tmp_path, verbose=True)
    assert not console.route_worker_output(verbose=True)
    dispatcher.emit({"lines": ["hello"], "pid": 1})
    assert printed == [{"lines": ["hello"], "pid": 1}]


def test_the_embedder_loads_without_a_progress_bar_and_leaves_the_setting_alone(capfd):
    """tag_normalize and report embed in the driver: sentence-transformers' load printed
    "Loading weights" bars on the console of every run (CI caught it in test_main_job)."""
    from transformers.utils import logging as hf_logging

    from alignfactory.llm.embed import Embedder

    assert hf_logging.is_progress_bar_enabled()
    Embedder()
    _, err = capfd.readouterr()
    assert "Loading weights" not in err
    assert hf_logging.is_progress_bar_enabled()  # as it was


def test_the_transformers_engine_loads_without_a_progress_bar(capfd):
    """Every LLM actor's load printed the bar into its worker output: a console that shows worker
    output (alignfactory ablate's sampling run, -v) got one per actor."""
    from transformers.utils import logging as hf_logging

    from alignfactory.llm import make_engine
    from alignfactory.llm.config import ModelConfig

    make_engine(ModelConfig(backend="transformers"), batch_size=1)
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and hf_logging.is_progress_bar_enabled()
