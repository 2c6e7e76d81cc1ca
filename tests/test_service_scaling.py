"""`ssd serve`'s scaling settings: vLLM's parallelism reaches the engine arguments under vLLM's own
names, bad values are refused naming the field, and `--store` picks the store."""

from __future__ import annotations

import dataclasses

import pytest

from common.config import ConfigError
from sampler_service.config import ServiceConfig
from sampler_service.engine import Engine
from sampler_service.store import SQLiteStore, open_store


def test_parallel_sizes_pass_through_to_vllm_engine_args():
    from vllm.engine.arg_utils import AsyncEngineArgs

    config = ServiceConfig(tensor_parallel_size=2, pipeline_parallel_size=3, data_parallel_size=4)
    kwargs = Engine(config, "/models/x")._engine_kwargs()
    args = AsyncEngineArgs(**kwargs)  # vLLM's own dataclass: an unknown name would raise here
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size) == (2, 3, 4)
    defaults = AsyncEngineArgs(**Engine(ServiceConfig(), "/models/x")._engine_kwargs())
    assert (defaults.tensor_parallel_size, defaults.pipeline_parallel_size, defaults.data_parallel_size) == (1, 1, 1)


@pytest.mark.parametrize("field, value", [("tensor_parallel_size", 0), ("data_parallel_size", -1),
                                          ("pipeline_parallel_size", 0), ("lease_s", 0.1),
                                          ("adapter_sync_timeout_s", 0), ("store", "mysql://db/ssd")])
def test_bad_scaling_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(ServiceConfig(), **{field: value})


def test_store_selection(tmp_path, pg_url):
    default = open_store("", tmp_path)
    assert isinstance(default, SQLiteStore) and default.path == tmp_path / "store.sqlite3"
    default.close()
    explicit = open_store(str(tmp_path / "elsewhere.db"), tmp_path)
    assert isinstance(explicit, SQLiteStore) and explicit.path == tmp_path / "elsewhere.db"
    explicit.close()
    shared = open_store(pg_url, tmp_path)
    assert type(shared).__name__ == "PostgresStore" and shared.shared
    shared.close()
