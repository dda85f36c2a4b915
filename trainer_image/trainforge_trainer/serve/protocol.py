"""The Open Inference Protocol (V2) REST bodies: validation and tensor conversion.

Pure functions, no torch and no I/O: a request body (already JSON-decoded) and the model's
signature go in, a numpy array or a `ProtocolError` naming the bad field comes out. Every
client mistake becomes a `ProtocolError` with a 4xx status here, so the web layer never
turns one into a 500.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# OIP datatype -> numpy dtype (BYTES and BF16 have no numeric numpy twin; not served).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


class ProtocolError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: -1 marks a variable dimension; dim 0 is always the batch."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Inclusive bounds of the values (token ids must index the embedding table).
    min_value: int | None = None
    max_value: int | None = None
    # Upper bounds of variable dimensions (-1: none); a GPT has no position past its context.
    max_shape: tuple[int, ...] | None = None
    # True when only the batch dimension is known (a user's entrypoint model).
    any_rank: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    input: TensorSpec
    output: TensorSpec


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    array: np.ndarray  # dim 0 is the batch: requests are merged and split along it


def _field(where: str, value: Any, kind: type, expect: str) -> Any:
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}: must be {expect} (got {_short(value)})")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shape(where: str, raw: Any) -> tuple[int, ...]:
    _field(where, raw, list, "a list of dimension sizes")
    if not raw or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in raw):
        raise ProtocolError(f"{where}: must be a non-empty list of sizes >= 1 (got {_short(raw)})")
    return tuple(raw)


def _check_shape(where: str, shape: tuple[int, ...], spec: TensorSpec) -> None:
    if spec.any_rank:
        return
    expected = "[" + ", ".join(str(d) for d in spec.shape) + "]"
    if len(shape) != len(spec.shape):
        raise ProtocolError(
            f"{where}: model expects {len(spec.shape)} dimensions {expected} "
            f"(-1: any size; got {list(shape)})"
        )
    for got, want in zip(shape[1:], spec.shape[1:], strict=True):
        if want not in (-1, got):
            raise ProtocolError(
                f"{where}: model expects {expected} (-1: any size; got {list(shape)})"
            )
    for i, (got, most) in enumerate(zip(shape, spec.max_shape or (), strict=False)):
        if most != -1 and got > most:
            raise ProtocolError(f"{where}: dimension {i} must be at most {most} (got {got})")


def _flatten(data: list[Any]) -> list[Any]:
    # OIP allows the row-major data flattened or nested; nesting is flattened here. Mixed
    # nesting like [1, [2]] is left to numpy, which refuses it.
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _to_array(where: str, data: list[Any], spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    dtype = DATATYPES[spec.datatype]
    size = math.prod(shape)
    if len(data) != size:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {size} values, got {len(data)}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"{where}: must be numbers ({exc})") from None
    kinds = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[dtype.kind]
    if raw.size and raw.dtype.kind not in kinds:
        expect = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise ProtocolError(f"{where}: {spec.datatype} data must be {expect}")
    if dtype.kind in "iu" and raw.size:
        # Casting would wrap silently (300 as UINT8 is 44): refuse out-of-range values.
        info = np.iinfo(dtype)
        low, high = info.min, info.max
        if spec.min_value is not None:
            low = max(low, spec.min_value)
        if spec.max_value is not None:
            high = min(high, spec.max_value)
        if int(raw.min()) < low or int(raw.max()) > high:
            raise ProtocolError(f"{where}: values must be in [{low}, {high}]")
    if dtype.kind == "f" and raw.size and not np.isfinite(raw.astype(np.float64)).all():
        raise ProtocolError(f"{where}: values must be finite numbers")
    return raw.astype(dtype, copy=False).reshape(shape)


def parse_infer_request(body: Any, signature: Signature) -> InferRequest:
    """Validate a decoded OIP inference request against the model; return its input array."""
    _field("request", body, dict, "a JSON object")
    request_id = body.get("id")
    if request_id is not None:
        _field("id", request_id, str, "a string")
    inputs = _field("inputs", body.get("inputs"), list, "a list with one input tensor")
    spec = signature.input
    if len(inputs) != 1:
        raise ProtocolError(
            f"inputs: model expects exactly one input {spec.name!r} (got {len(inputs)})"
        )
    tensor = _field("inputs[0]", inputs[0], dict, "an object with name, shape, datatype, data")
    name = tensor.get("name")
    if name != spec.name:
        raise ProtocolError(f"inputs[0].name: unknown input {name!r}; model expects {spec.name!r}")
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise ProtocolError(
            f"inputs[0].datatype: model expects {spec.datatype} (got {_short(datatype)})"
        )
    params = tensor.get("parameters")
    if isinstance(params, Mapping) and "binary_data_size" in params:
        raise ProtocolError("inputs[0].parameters: binary tensor data is not supported; send JSON")
    shape = _shape("inputs[0].shape", tensor.get("shape"))
    _check_shape("inputs[0].shape", shape, spec)
    data = _field("inputs[0].data", tensor.get("data"), list, "a list of values (row-major)")
    _check_outputs(body.get("outputs"), signature.output)
    return InferRequest(request_id, _to_array("inputs[0].data", _flatten(data), spec, shape))


def _check_outputs(outputs: Any, spec: TensorSpec) -> None:
    if outputs is None:
        return
    _field("outputs", outputs, list, "a list of requested outputs")
    for i, out in enumerate(outputs):
        name = out.get("name") if isinstance(out, dict) else None
        if name != spec.name:
            raise ProtocolError(
                f"outputs[{i}].name: unknown output {_short(name)}; model has {spec.name!r}"
            )


def infer_response(
    model_name: str, version: str, request_id: str | None, spec: TensorSpec, array: np.ndarray
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": version,
        "outputs": [
            {
                "name": spec.name,
                "datatype": _DATATYPE_OF.get(array.dtype, spec.datatype),
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
        ],
    }
    if request_id is not None:
        response["id"] = request_id
    return response


def model_metadata(
    model_name: str, version: str, signature: Signature, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "name": model_name,
        "versions": [version],
        "platform": "pytorch",
        "inputs": [signature.input.metadata()],
        "outputs": [signature.output.metadata()],
        "parameters": dict(parameters),
    }


def batch_key(array: np.ndarray) -> tuple[Any, ...]:
    """Requests can share a batch only when everything but the batch dimension matches."""
    return (array.dtype.str, *array.shape[1:])


def split_rows(merged: np.ndarray, rows: Sequence[int]) -> list[np.ndarray]:
    """Cut a batch output back into one array per request (views, no copy)."""
    if merged.shape[0] != sum(rows):
        raise ValueError(f"model returned {merged.shape[0]} rows for a batch of {sum(rows)}")
    bounds = np.cumsum(rows)[:-1]
    return list(np.split(merged, bounds))
