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
    binary_output: bool = False  # answer with the binary tensor data extension


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


def _flatten(where: str, data: list[Any], shape: tuple[int, ...]) -> list[Any]:
    """The row-major values of flat or nested `data`; nested data must follow `shape` exactly.

    Iterative and bounded by the tensor's rank, so no nesting depth can exhaust the stack.
    """
    if not data or not isinstance(data[0], list):
        if any(isinstance(item, list) for item in data):
            raise ProtocolError(f"{where}: mixes numbers and lists; nest all values or none")
        return data
    flat: list[Any] = []
    # (items, depth): items is a list that must hold shape[depth] entries.
    stack: list[tuple[list[Any], int]] = [(data, 0)]
    while stack:
        items, depth = stack.pop()
        if len(items) != shape[depth]:
            raise ProtocolError(
                f"{where}: ragged nesting: a list at depth {depth} has {len(items)} entries, "
                f"shape {list(shape)} needs {shape[depth]}"
            )
        leaf = depth == len(shape) - 1
        if leaf:
            if any(isinstance(item, list) for item in items):
                raise ProtocolError(
                    f"{where}: nested deeper than the {len(shape)} dimensions of shape "
                    f"{list(shape)}"
                )
            flat.extend(items)
            continue
        if not all(isinstance(item, list) for item in items):
            raise ProtocolError(
                f"{where}: ragged nesting: depth {depth + 1} mixes numbers and lists "
                f"(shape {list(shape)})"
            )
        stack.extend((item, depth + 1) for item in reversed(items))
    return flat


def _check_values(where: str, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Range and finiteness of an array already of the input's dtype."""
    dtype = DATATYPES[spec.datatype]
    if not array.size:
        return array
    if dtype.kind in "iu" and (spec.min_value is not None or spec.max_value is not None):
        low = spec.min_value if spec.min_value is not None else np.iinfo(dtype).min
        high = spec.max_value if spec.max_value is not None else np.iinfo(dtype).max
        if int(array.min()) < low or int(array.max()) > high:
            raise ProtocolError(f"{where}: values must be in [{low}, {high}]")
    # After the cast: 1e39 is finite as a float64 but Infinity as FP32.
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(
            f"{where}: values must be finite {spec.datatype} numbers (NaN, Infinity and "
            f"values beyond the {spec.datatype} range are refused)"
        )
    return array


def _to_array(where: str, data: list[Any], spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    dtype = DATATYPES[spec.datatype]
    size = math.prod(shape)
    if len(data) != size:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {size} values, got {len(data)}")
    # JSON true/false are not numbers (numpy would read them as 1 and 0), nor numbers booleans.
    if dtype.kind == "b":
        if not all(type(v) is bool for v in data):
            raise ProtocolError(f"{where}: BOOL data must be true or false")
    elif any(type(v) is bool for v in data):
        raise ProtocolError(f"{where}: {spec.datatype} data must be numbers, not true/false")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"{where}: must be numbers ({exc})") from None
    kinds = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
    if raw.size and raw.dtype.kind not in kinds:
        expect = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise ProtocolError(f"{where}: {spec.datatype} data must be {expect}")
    if dtype.kind in "iu" and raw.size:
        # Casting would wrap silently (300 as UINT8 is 44): refuse out-of-range values.
        info = np.iinfo(dtype)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise ProtocolError(f"{where}: values must be in [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):  # an overflow to Infinity is reported just below
        array = raw.astype(dtype, copy=False).reshape(shape)
    return _check_values(where, array, spec)


def _from_binary(
    where: str, binary: bytes, size_param: Any, spec: TensorSpec, shape: tuple[int, ...]
) -> np.ndarray:
    dtype = DATATYPES[spec.datatype]
    need = math.prod(shape) * dtype.itemsize
    if not isinstance(size_param, int) or isinstance(size_param, bool) or size_param != need:
        raise ProtocolError(
            f"{where}.parameters.binary_data_size: shape {list(shape)} of {spec.datatype} "
            f"needs {need} bytes (got {_short(size_param)})"
        )
    if len(binary) != need:
        raise ProtocolError(
            f"{where}: the binary part of the body has {len(binary)} bytes; "
            f"binary_data_size says {need}"
        )
    # The binary extension is little-endian, row-major.
    array = np.frombuffer(binary, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if dtype.kind == "b" and binary.strip(b"\0\1"):
        raise ProtocolError(f"{where}: BOOL bytes must be 0 or 1")
    return _check_values(where, array, spec)


def parse_infer_request(
    body: Any, signature: Signature, binary: bytes | None = None
) -> InferRequest:
    """Validate a decoded OIP inference request against the model; return its input array.

    `binary`: the bytes after the JSON header when the request uses the binary tensor data
    extension (the Inference-Header-Content-Length header), else None.
    """
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
    shape = _shape("inputs[0].shape", tensor.get("shape"))
    _check_shape("inputs[0].shape", shape, spec)
    params = _parameters("inputs[0].parameters", tensor.get("parameters"))
    binary_output = _check_outputs(body.get("outputs"), signature.output) or _flag(
        "parameters.binary_data_output",
        _parameters("parameters", body.get("parameters")).get("binary_data_output"),
    )
    if "binary_data_size" in params:
        if binary is None:
            raise ProtocolError(
                "inputs[0].parameters.binary_data_size: binary tensor data needs the "
                "Inference-Header-Content-Length header (the length of the JSON part)"
            )
        if "data" in tensor:
            raise ProtocolError("inputs[0]: give either data or binary_data_size, not both")
        array = _from_binary("inputs[0]", binary, params["binary_data_size"], spec, shape)
        return InferRequest(request_id, array, binary_output)
    if binary:
        raise ProtocolError(
            f"the body has {len(binary)} bytes after the JSON header, but no input has "
            "parameters.binary_data_size"
        )
    data = _field("inputs[0].data", tensor.get("data"), list, "a list of values (row-major)")
    array = _to_array("inputs[0].data", _flatten("inputs[0].data", data, shape), spec, shape)
    return InferRequest(request_id, array, binary_output)


def _parameters(where: str, raw: Any) -> Mapping[str, Any]:
    if raw is None:
        return {}
    return _field(where, raw, dict, "an object")


def _flag(where: str, raw: Any) -> bool:
    if raw is None:
        return False
    return bool(_field(where, raw, bool, "true or false"))


def _check_outputs(outputs: Any, spec: TensorSpec) -> bool:
    """Validate the requested outputs; True when the output is asked for as binary data."""
    if outputs is None:
        return False
    _field("outputs", outputs, list, "a list of requested outputs")
    binary = False
    for i, out in enumerate(outputs):
        name = out.get("name") if isinstance(out, dict) else None
        if name != spec.name:
            raise ProtocolError(
                f"outputs[{i}].name: unknown output {_short(name)}; model has {spec.name!r}"
            )
        params = _parameters(f"outputs[{i}].parameters", out.get("parameters"))
        binary = binary or _flag(f"outputs[{i}].parameters.binary_data", params.get("binary_data"))
    return binary


def infer_response(
    model_name: str,
    version: str,
    request_id: str | None,
    spec: TensorSpec,
    array: np.ndarray,
    binary: bool = False,
) -> tuple[dict[str, Any], bytes | None]:
    """The response's JSON part and, for a binary output, the bytes that follow it.

    JSON has no NaN or Infinity: a JSON output with such values is refused (the binary
    extension carries them as they are).
    """
    output: dict[str, Any] = {
        "name": spec.name,
        "datatype": _DATATYPE_OF.get(array.dtype, spec.datatype),
        "shape": list(array.shape),
    }
    data: bytes | None = None
    if binary:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        output["parameters"] = {"binary_data_size": len(data)}
    else:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise ProtocolError(
                f"the model's output {spec.name!r} has {bad} non-finite values (NaN or "
                "Infinity), which JSON cannot carry; request the output as binary data "
                "(outputs[].parameters.binary_data: true) to receive them",
                500,
            )
        output["data"] = array.ravel().tolist()
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": version,
        "outputs": [output],
    }
    if request_id is not None:
        response["id"] = request_id
    return response, data


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
