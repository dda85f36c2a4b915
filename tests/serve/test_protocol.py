"""OIP V2 request validation: every client mistake is a 4xx naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trainforge_trainer.config import GptConfig, MlpConfig, parse
from trainforge_trainer.serve.model_store import signature_for
from trainforge_trainer.serve.protocol import (
    ProtocolError,
    infer_response,
    parse_infer_request,
    split_rows,
)

MLP = signature_for(parse({"recipe": "mlp", "model": {"inputDim": 2, "numClasses": 3}}))
GPT = signature_for(parse({"recipe": "gpt", "model": {"vocabSize": 10, "seqLen": 4}}))


def body(**tensor: Any) -> dict[str, Any]:
    base = {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]}
    return {"inputs": [base | tensor]}


def test_a_valid_request_becomes_an_array_of_the_declared_shape_and_dtype() -> None:
    req = parse_infer_request({"id": "r1", **body(shape=[2, 2], data=[1, 2, 3, 4])}, MLP)
    assert req.id == "r1"
    assert req.array.dtype == np.float32
    np.testing.assert_array_equal(req.array, [[1, 2], [3, 4]])


def test_nested_row_major_data_is_accepted_like_flattened_data() -> None:
    req = parse_infer_request(body(shape=[2, 2], data=[[1, 2], [3, 4]]), MLP)
    np.testing.assert_array_equal(req.array, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ([], "request: must be a JSON object"),
        ({}, "inputs: must be a list"),
        ({"inputs": []}, "inputs: model expects exactly one input 'input' (got 0)"),
        (body(name="x"), "inputs[0].name: unknown input 'x'; model expects 'input'"),
        (body(datatype="INT64"), "inputs[0].datatype: model expects FP32 (got 'INT64')"),
        (body(datatype="BYTES"), "inputs[0].datatype: model expects FP32"),
        (body(shape=[1, 3], data=[1, 2, 3]), "inputs[0].shape: model expects [-1, 2]"),
        (body(shape=[2]), "inputs[0].shape: model expects 2 dimensions [-1, 2]"),
        (body(shape=[0, 2], data=[]), "inputs[0].shape: must be a non-empty list of sizes >= 1"),
        (body(shape="1,2"), "inputs[0].shape: must be a list"),
        (body(shape=[2, 2]), "inputs[0].data: shape [2, 2] needs 4 values, got 2"),
        (body(data=["a", "b"]), "inputs[0].data: FP32 data must be numbers"),
        (body(data=[None, 1]), "inputs[0].data: FP32 data must be numbers"),
        (body(data=[[1], [2, 3]]), "inputs[0].data: shape [1, 2] needs 2 values, got 3"),
        (body(data=1.0), "inputs[0].data: must be a list"),
        (body(data=[1, [2]]), "inputs[0].data: must be numbers"),
        (body(parameters={"binary_data_size": 8}), "binary tensor data is not supported"),
        ({"id": 7, **body()}, "id: must be a string"),
        ({**body(), "outputs": [{"name": "probs"}]}, "outputs[0].name: unknown output 'probs'"),
    ],
)
def test_client_mistakes_are_400_with_the_field_named(request_body: Any, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_infer_request(request_body, MLP)
    assert err.value.status == 400
    assert message in err.value.message


def test_nan_is_refused_rather_than_served() -> None:
    with pytest.raises(ProtocolError, match="finite"):
        parse_infer_request(body(data=[float("nan"), 1.0]), MLP)


def tokens(shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "tokens", "shape": shape, "datatype": "INT64", "data": data}]}


def test_gpt_tokens_of_any_length_up_to_the_context_are_accepted() -> None:
    assert isinstance(parse({"recipe": "gpt"}), GptConfig)
    req = parse_infer_request(tokens([1, 3], [1, 2, 9]), GPT)
    assert req.array.dtype == np.int64 and req.array.shape == (1, 3)


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        ([1, 5], [1, 2, 3, 4, 5], "dimension 1 must be at most 4 (got 5)"),
        ([1, 2], [1, 10], "values must be in [0, 9]"),
        ([1, 2], [-1, 0], "values must be in [0, 9]"),
        ([1, 2], [1.5, 2], "INT64 data must be integers"),
    ],
)
def test_gpt_token_ids_and_lengths_outside_the_model_are_400(
    shape: list[int], data: list[Any], message: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_infer_request(tokens(shape, data), GPT)
    assert err.value.status == 400 and message in err.value.message


def test_signature_of_the_mlp_recipe_comes_from_its_config() -> None:
    config = parse({"recipe": "mlp", "model": {"inputDim": 5, "numClasses": 7}})
    assert isinstance(config, MlpConfig)
    sig = signature_for(config)
    assert sig.input.metadata() == {"name": "input", "datatype": "FP32", "shape": [-1, 5]}
    assert sig.output.metadata() == {"name": "logits", "datatype": "FP32", "shape": [-1, 7]}


def test_response_has_the_oip_output_tensor_and_echoes_the_id() -> None:
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    resp = infer_response("m", "4", "abc", MLP.output, out)
    assert resp == {
        "model_name": "m",
        "model_version": "4",
        "id": "abc",
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
        ],
    }


def test_split_rows_returns_each_requests_rows_in_order() -> None:
    merged = np.arange(12).reshape(6, 2)
    parts = split_rows(merged, [1, 3, 2])
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]
    with pytest.raises(ValueError, match="5 rows for a batch of 6"):
        split_rows(merged[:5], [1, 3, 2])
