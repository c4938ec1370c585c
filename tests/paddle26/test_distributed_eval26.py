"""Sharded evaluation on 2 gloo ranks under Paddle 2.6 (``all_gather_object`` of the per-series predictions): the
same checks as tests/test_distributed_eval.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_distributed_eval import check_sharded_eval, run_sharded_eval  # noqa: E402


@pytest.mark.slow
def test_two_rank_sharded_eval_equals_one_rank_paddle26(tmp_path):
    r0, r1 = run_sharded_eval(tmp_path)
    check_sharded_eval(r0, r1)
