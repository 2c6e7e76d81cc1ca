"""Request validation at the service boundary, without the engine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sampler_service.errors import invalid_request_from
from sampler_service.schemas import MAX_STOP_STRINGS, MAX_TEMPERATURE, JobRequest, SampleRequest, is_valid_adapter_name


def _param_of(body: dict, model=SampleRequest) -> str | None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return invalid_request_from(info.value.errors()).param


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", MAX_TEMPERATURE + 1), ("top_p", 0.0), ("top_p", 1.01),
    ("top_k", -5), ("top_k", 0), ("n", 0), ("max_tokens", 0), ("min_p", -0.1), ("logprobs", -1),
    ("stop", ["x"] * (MAX_STOP_STRINGS + 1)), ("seed", -1), ("adapter", "bad name!"), ("n", "3"),
    ("ignore_eos", "yes"),
])
def test_out_of_bounds_or_wrong_type_names_the_field(field, value):
    assert _param_of({"prompts": ["x"], field: value}) == field


def test_defaults_are_valid_and_exactly_one_input_is_required():
    request = SampleRequest.model_validate({"prompts": ["x"]})
    assert request.sampling_dict()["temperature"] == 1.0 and request.inputs() == ["x"]
    with pytest.raises(ValidationError):
        SampleRequest.model_validate({})
    with pytest.raises(ValidationError):
        SampleRequest.model_validate({"prompts": ["x"], "messages": [[{"role": "user", "content": "y"}]]})
    assert _param_of({"prompts": []}) == "prompts"
    assert _param_of({"messages": [[{"role": "user"}]]}) == "messages.0.0.content"


def test_adapter_refs_accept_alias_and_pinned_version():
    assert SampleRequest.model_validate({"prompts": ["x"], "adapter": "ssd@v3"}).adapter == "ssd@v3"
    assert is_valid_adapter_name("ssd-round_1.a") and not is_valid_adapter_name("../etc")


def test_job_prompts_need_unique_ids_and_one_input_each():
    ok = JobRequest.model_validate({"prompts": [{"id": "a", "prompt": "x"},
                                                {"id": "b", "messages": [{"role": "user", "content": "y"}]}]})
    assert [p.input() for p in ok.prompts] == ["x", [{"role": "user", "content": "y"}]]
    assert ok.filters.drop_empty is True
    for bad in ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], [{"id": "a"}], [{"id": "", "prompt": "x"}]):
        with pytest.raises(ValidationError):
            JobRequest.model_validate({"prompts": bad})
    assert _param_of({"prompts": [{"id": "a", "prompt": "x"}], "filters": {"drop_shortest_fraction": 1.0}},
                     JobRequest) == "filters.drop_shortest_fraction"
    assert ok.filters.shortest_by == "chars"
    assert _param_of({"prompts": [{"id": "a", "prompt": "x"}], "filters": {"shortest_by": "bytes"}},
                     JobRequest) == "filters.shortest_by"
