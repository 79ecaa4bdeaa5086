"""The transformers engine's loop stop (Sampling.stop_loops): a row whose last N tokens already
occurred twice before in its text stops there with finish reason "repetition" (incomplete)."""

import torch

from alignfactory.llm.base import Sampling, is_complete
from alignfactory.llm.transformers_engine import _Loops

EOS = 2


def call(loops, rows):
    ids = torch.tensor([[9, 9] + r for r in rows])  # a 2-token prompt before each row's text
    return loops(ids, None).tolist()


def test_a_span_repeated_three_times_stops_the_row_and_records_where():
    loops = _Loops(window=3, prompt_len=2, eos_ids=[EOS])
    looping = [5, 6, 7, 5, 6, 7, 5, 6, 7]
    varied = [10, 11, 12, 13, 14, 15, 16, 17, 18]
    assert call(loops, [looping, varied]) == [True, False]
    assert loops.at == {0: 9}
    # two copies are not a loop yet
    assert call(_Loops(3, 2, [EOS]), [[5, 6, 7, 1, 5, 6, 7, 3, 4]]) == [False]


def test_a_row_that_ended_with_eos_is_not_a_loop_even_as_padding_repeats():
    loops = _Loops(window=2, prompt_len=2, eos_ids=[EOS])
    assert call(loops, [[5, 6, EOS, EOS, EOS, EOS, EOS, EOS]]) == [False]
    assert loops.at == {}


def test_stop_loops_is_off_by_default_and_out_of_old_fingerprints():
    assert Sampling().stop_loops == 0 and "stop_loops" not in Sampling().to_dict()
    assert Sampling(stop_loops=16).to_dict()["stop_loops"] == 16
    assert not is_complete("repetition")
