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
        (body(data=[[1], [2, 3]]), "inputs[0].data: ragged nesting"),
        (body(data=1.0), "inputs[0].data: must be a list"),
        (body(data=[1, [2]]), "inputs[0].data: mixes numbers and lists"),
        (
            body(parameters={"binary_data_size": 8}),
            "binary tensor data needs the Inference-Header-Content-Length header",
        ),
        # Ragged rows that happen to hold the right number of values.
        (body(shape=[2, 2], data=[[1], [2, 3, 4]]), "inputs[0].data: ragged nesting"),
        (body(shape=[2, 2], data=[[1, 2], 3, 4]), "inputs[0].data: ragged nesting"),
        (body(data=[[[1], [2]]]), "inputs[0].data: nested deeper than the 2 dimensions"),
        # JSON booleans are not numbers (numpy would take them for 1 and 0).
        (body(data=[True, False]), "inputs[0].data: FP32 data must be numbers, not true/false"),
        (body(data=[1.5, True]), "inputs[0].data: FP32 data must be numbers, not true/false"),
        # Finite as a float64, Infinity as FP32.
        (body(data=[1e39, 1.0]), "inputs[0].data: values must be finite FP32 numbers"),
        (body(data=[-3.5e38, 1.0]), "inputs[0].data: values must be finite FP32 numbers"),
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
        ([1, 2], [True, 2], "INT64 data must be numbers, not true/false"),
        ([1, 2], [[1], [2]], "ragged nesting"),
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
    resp, binary = infer_response("m", "4", "abc", MLP.output, out)
    assert binary is None
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


def test_a_non_finite_output_is_a_clear_error_in_json_and_exact_in_binary() -> None:
    out = np.array([[1.0, np.nan, np.inf]], dtype=np.float32)
    with pytest.raises(ProtocolError) as err:
        infer_response("m", "4", None, MLP.output, out)
    assert err.value.status == 500
    assert "2 non-finite values (NaN or Infinity), which JSON cannot carry" in err.value.message
    resp, binary = infer_response("m", "4", None, MLP.output, out, binary=True)
    assert resp["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert "data" not in resp["outputs"][0]
    assert binary is not None
    np.testing.assert_array_equal(np.frombuffer(binary, "<f4").reshape(1, 3), out)


def test_binary_input_is_read_little_endian_and_validated_like_json() -> None:
    x = np.array([[0.5, -2.0], [3.0, 4.0]], dtype="<f4")
    tensor = {"name": "input", "shape": [2, 2], "datatype": "FP32"}
    req = parse_infer_request(
        {
            "inputs": [tensor | {"parameters": {"binary_data_size": 16}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        },
        MLP,
        x.tobytes(),
    )
    np.testing.assert_array_equal(req.array, x)
    assert req.binary_output
    assert (
        parse_infer_request(
            {"inputs": [tensor | {"parameters": {"binary_data_size": 16}}]}, MLP, x.tobytes()
        ).binary_output
        is False
    )
    bad = [
        ({"binary_data_size": 12}, x.tobytes(), "needs 16 bytes (got 12)"),
        ({"binary_data_size": 16}, x.tobytes()[:12], "binary part of the body has 12 bytes"),
        (
            {"binary_data_size": 16},
            np.array([[1, np.inf], [1, 1]], dtype="<f4").tobytes(),
            "values must be finite FP32 numbers",
        ),
    ]
    for params, data, message in bad:
        with pytest.raises(ProtocolError) as err:
            parse_infer_request({"inputs": [tensor | {"parameters": params}]}, MLP, data)
        assert err.value.status == 400 and message in err.value.message
    with pytest.raises(ProtocolError, match=r"no input has parameters\.binary_data_size"):
        parse_infer_request(body(), MLP, b"\0" * 8)
