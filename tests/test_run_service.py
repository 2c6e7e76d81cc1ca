"""The service `ssd run` starts for itself is sized for the run: vLLM pads every adapter to
max_lora_rank, so the run asks for the smallest rank vLLM accepts that holds its own."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from sampler_service.config import VLLM_MAX_LORA_RANKS, served_lora_rank
from ssd.config import RunConfig


@pytest.mark.parametrize(("lora_rank", "served"), [(1, 1), (4, 8), (16, 16), (17, 32), (64, 64), (300, 320)])
def test_the_served_rank_is_the_smallest_that_holds_the_runs(lora_rank, served):
    assert served_lora_rank(lora_rank) == served and served in VLLM_MAX_LORA_RANKS


def test_a_rank_no_server_takes_is_refused_up_front():
    assert served_lora_rank(RunConfig(lora_rank=512).lora_rank) == 512
    with pytest.raises(ConfigError, match="lora_rank"):
        RunConfig(lora_rank=513)
