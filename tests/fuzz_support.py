"""Hypothesis strategies for hostile inputs in every dialect the gateway decodes, and the one
property the fuzz tests hold them to: decoded within budget, or refused with a 4xx.

Inputs mix well-formed tensors (so the decoders' success paths run) with the attacks that
once gave 500s: huge or negative dims, too many dims, one-value broadcasts, deep nesting,
lone surrogates, numbers no dtype can hold, booleans among numbers, ragged lists, truncated
BYTES, random bytes. Hypothesis draws each case's structure (dialect form, dtypes, which
attack) and a seed; a `Forge` grows the bulk (leaves, shapes, bytes) from the seed, which keeps
a case well under a millisecond to generate, so a run can afford thousands of them.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gateway import dtypes
from gateway.codecs.budget import DecodeBudget
from gateway.errors import GatewayError
from gateway.types import ModelMetadata, Tensors, TensorSpec
from protos.inference import grpc_service_pb2 as pb
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import predict_pb2

#: Small enough that generated inputs cross every limit often.
SMALL_BUDGET = DecodeBudget(max_tensor_elements=64, max_request_elements=96, max_batch_rows=16,
                            max_dims=5)
SMALL_BUDGET_TOML = """
[server.decode]
max_tensor_elements = 64
max_request_elements = 96
max_batch_rows = 16
max_dims = 5
"""


def fuzz_settings(examples: int) -> settings:
    """Deterministic (the same cases every run, no example database), no per-case deadline on
    a shared 2-core machine."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


# --- the property ---------------------------------------------------------------------------


def decoded_or_refused(decode: Callable[[], Tensors], budget: DecodeBudget,
                       seen: Counter[str]) -> None:
    """`decode()` gives tensors within `budget` or raises a GatewayError with a 4xx status;
    any other exception fails the test (pytest shows it)."""
    try:
        tensors = decode()
    except GatewayError as exc:
        assert 400 <= exc.http_status < 500, f"{type(exc).__name__} {exc.http_status}: {exc}"
        assert exc.message
        seen[f"refused {exc.http_status}"] += 1
        return
    assert_within(tensors, budget)
    seen["decoded"] += 1


def assert_within(tensors: Tensors, budget: DecodeBudget) -> None:
    total = 0
    for name, array in tensors.items():
        assert isinstance(array, np.ndarray), name
        assert array.dtype in dtypes.BY_NUMPY, (name, array.dtype)
        assert array.ndim <= budget.max_dims, (name, array.shape)
        assert array.size <= budget.max_tensor_elements, (name, array.shape)
        assert not array.ndim or array.shape[0] <= budget.max_batch_rows, (name, array.shape)
        if array.dtype == dtypes.BYTES_NUMPY:
            assert all(type(v) is bytes for v in array.reshape(-1)), name
        total += array.size
    assert total <= budget.max_request_elements


def counts(seen: Mapping[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(seen.items()))


# --- the forge: bulk values from a seed -------------------------------------------------------

EDGE_INTS = [0, 1, -1, 127, 128, 255, 256, -128, -129, 65504, 70000, 2**24 - 1, 2**24,
             -(2**24), 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**53 - 1, 2**53, 2**63 - 1,
             2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 2**70, -(2**70), 10**40]
EDGE_FLOATS = [0.5, 1.0, -0.0, 0.1, 2.5e-8, 65504.0, 70000.0, 3.4e38, 3.5e38, 1e39, 1e300,
               5e-324, math.inf, -math.inf, math.nan]
EDGE_DIMS = [25_000_000, 10**6, 2**62, 2**63 - 1, -(2**63), -1, 65_537, 17]
_CHARS = "aZ09 \u00e9\u2603\U0001f600\"\\\n\x00"
_SURROGATES = "\ud800\udbff\udc00\udfff"
KINDS = "fiubO"  # float, int, unsigned, bool, bytes (object)


class Forge:
    """Hostile and well-formed values from one seed."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def pick(self, items: list[Any]) -> Any:
        return items[self.r.randrange(len(items))]

    def text(self, size: int = 5) -> str:
        pool = _CHARS + _SURROGATES if self.chance(0.15) else _CHARS
        return "".join(self.pick(list(pool)) for _ in range(self.r.randint(0, size)))

    def binary(self, size: int) -> bytes:
        return self.r.randbytes(size)

    def b64(self) -> Any:
        if self.chance(0.8):
            return {"b64": base64.b64encode(self.binary(self.r.randint(0, 6))).decode()}
        return self.pick([{"b64": self.text()}, {"b64": 1}, {"b64": "", "x": 1}, {"b64": "a=b"}])

    def scalar(self) -> Any:
        roll = self.r.randrange(8)
        if roll == 0:
            return self.pick([None, True, False])
        if roll in (1, 2):
            return self.pick(EDGE_INTS) if self.chance(0.5) else self.r.randint(-300, 300)
        if roll in (3, 4):
            return self.pick(EDGE_FLOATS) if self.chance(0.5) else self.r.uniform(-1e6, 1e6)
        if roll in (5, 6):
            return self.text()
        return self.b64()

    def leaf(self, kind: str) -> Any:
        """A well-formed element of a tensor of `kind`."""
        if kind == "f":
            return self.r.uniform(-1e3, 1e3) if self.chance(0.7) else self.r.randint(-99, 99)
        if kind == "i":
            return self.r.randint(-100, 100)
        if kind == "u":
            return self.r.randint(0, 200)
        if kind == "b":
            return self.chance(0.5)
        return self.text() if self.chance(0.8) else self.b64()

    def shape(self, max_rank: int = 4, max_elements: int = 120) -> list[int]:
        dims = [self.r.randint(0, 5) for _ in range(self.r.randint(0, max_rank))]
        while math.prod(dims) > max_elements:
            dims[dims.index(max(dims))] //= 2
        return dims

    def fitted(self, spec: TensorSpec, rows: int | None = None) -> list[int]:
        """A shape `spec` accepts: its fixed dims, small ones for its dynamic dims."""
        shape = [d if d >= 0 else self.r.randint(1, 3) for d in spec.shape]
        if shape and rows is not None:
            shape[0] = rows
        return shape

    def array(self, spec: TensorSpec, shape: list[int]) -> np.ndarray:
        """Random values of `spec`'s dtype in `shape`."""
        count = math.prod(shape)
        if spec.dtype.is_bytes:
            array = np.empty(count, dtype=object)
            array[:] = [self.binary(self.r.randint(0, 4)) for _ in range(count)]
            return array.reshape(shape)
        values = np.frombuffer(self.binary(count * 8), np.uint8)[:count] % 100
        return values.astype(spec.dtype.numpy).reshape(shape)

    def edge_shape(self) -> list[int]:
        return self.pick([[25_000_000, 4], [10**6, 10**6], [2**63 - 1], [0, 2**62], [-1, 4],
                          [1] * 6, [1] * 70, [17, 1], [3, 0, 2**40]])

    def shaped(self, shape: list[int], leaf: Callable[[], Any]) -> Any:
        """Nested lists of `shape` with leaves from `leaf()`."""
        if not shape:
            return leaf()
        return [self.shaped(shape[1:], leaf) for _ in range(shape[0])]

    def deep(self) -> Any:
        """One value inside up to 1000 nested lists (once a RecursionError)."""
        value = self.scalar()
        for _ in range(self.pick([2, 5, 6, 30, 64, 65, 900, 1000])):
            value = [value]
        return value

    def json_value(self, depth: int = 3) -> Any:
        roll = self.r.randrange(4)
        if depth <= 0 or roll < 2:
            return self.scalar()
        if roll == 2:
            return [self.json_value(depth - 1) for _ in range(self.r.randint(0, 4))]
        return {self.text(3): self.json_value(depth - 1) for _ in range(self.r.randint(0, 3))}

    def tensor_value(self, kind: str, shape: list[int] | None = None) -> Any:
        """A value for a tensor of `kind`: mostly well-formed, else mixed, ragged, deep or
        anything at all."""
        dims = self.shape() if shape is None else shape
        roll = self.r.randrange(12)
        if roll < 7:
            return self.shaped(dims, lambda: self.leaf(kind))
        if roll < 9:  # one element of another type, somewhere
            value = self.shaped(dims, lambda: self.leaf(kind))
            return self._replace_one(value, self.scalar())
        if roll < 10:  # one row longer or shorter
            value = self.shaped(dims, lambda: self.leaf(kind))
            return self._replace_one(value, [self.leaf(kind)] * self.r.randint(0, 3))
        if roll < 11:
            return self.deep()
        return self.json_value()

    def _replace_one(self, value: Any, replacement: Any) -> Any:
        if not isinstance(value, list) or not value:
            return replacement
        at = self.r.randrange(len(value))
        value[at] = self._replace_one(value[at], replacement) if self.chance(0.6) \
            else replacement
        return value

    def length_prefixed(self, count: int) -> bytes:
        """`count` BYTES elements as v2 raw contents: sometimes one length, sometimes
        truncated, padded or prefixed with junk."""
        size = self.r.randint(0, 4)
        same = self.chance(0.5)
        items = [self.binary(size if same else self.r.randint(0, 5)) for _ in range(count)]
        data = b"".join(len(item).to_bytes(4, "little") + item for item in items)
        roll = self.r.randrange(6)
        if roll == 0 and data:
            data = data[:self.r.randrange(len(data))]
        elif roll == 1:
            data += self.binary(self.r.randint(1, 9))
        elif roll == 2:
            data = self.binary(self.r.randint(1, 12)) + data
        return data


seeds = st.integers(0, 2**64 - 1)


def kind_of(dtype: dtypes.DType) -> str:
    kind = dtype.numpy.kind
    return "f" if kind in "fV" else kind


# --- TF Serving JSON ------------------------------------------------------------------------


def spec(name: str, v2: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, dtypes.BY_V2[v2], tuple(shape))


def signature(*inputs: TensorSpec, name: str = "m") -> ModelMetadata:
    return ModelMetadata(name, "1", ("1",), "onnxruntime_onnx", inputs, (spec("y", "FP32", -1),))


#: One model per dtype with one input `x`, and one with three inputs.
SIGNATURES = [signature(spec("x", v2, -1)) for v2 in dtypes.BY_V2] + [
    signature(spec("a", "FP32", -1, 2), spec("b", "INT64", -1, 1), spec("s", "BYTES", -1))]
TF_FORMS = ["row", "row-named", "columnar", "columnar-named", "junk"]


def tf_json_document(forge: Forge, model: ModelMetadata, form: str) -> Any:
    """A `:predict` body for `model`: row or columnar, named or not, well-formed or not."""
    kinds = {s.name: kind_of(s.dtype) for s in model.inputs}
    names = list(kinds) + ([forge.pick(["zz", "b64"])] if forge.chance(0.1) else [])
    fitted = forge.chance(0.5)  # shaped as the signature says, or anyhow
    row_shapes = {s.name: forge.fitted(s)[1:] for s in model.inputs} if fitted else {}
    for name in names:
        row_shapes.setdefault(name, forge.shape(max_rank=2, max_elements=8))
    rows = forge.r.randint(1, 20)
    document: Any
    if form == "row":
        name = names[0]
        document = {"instances": [forge.tensor_value(kinds.get(name, "f"), row_shapes[name])
                                  for _ in range(rows)]}
    elif form == "row-named":
        document = {"instances": [
            {name: forge.tensor_value(kinds.get(name, "f"), row_shapes[name]) for name in names}
            for _ in range(rows)]}
    elif form == "columnar":
        document = {"inputs": forge.tensor_value(kinds.get(names[0], "f"),
                                                 [rows, *row_shapes[names[0]]])}
    elif form == "columnar-named":
        document = {"inputs": {name: forge.tensor_value(kinds.get(name, "f"),
                                                        [rows, *row_shapes[name]])
                               for name in names}}
    else:
        document = forge.pick([forge.json_value(), {"instances": forge.json_value()},
                               {"inputs": forge.json_value()}, {"instances": []}])
    if isinstance(document, dict) and forge.chance(0.2):
        document["signature_name"] = forge.pick([forge.text(), 7, None])
    if isinstance(document, dict) and forge.chance(0.03):
        document["inputs"] = document["instances"] = [1.0]
    return document


@st.composite
def tf_json_documents(draw: st.DrawFn, model: ModelMetadata) -> Any:
    return tf_json_document(Forge(draw(seeds)), model, draw(st.sampled_from(TF_FORMS)))


# --- v2 JSON --------------------------------------------------------------------------------

V2_NAMES = ["x", "a", "b", "s"]


def v2_tensor(forge: Forge, datatype: Any, name: str) -> Any:
    dtype = dtypes.BY_V2.get(datatype) if isinstance(datatype, str) else None
    kind = kind_of(dtype) if dtype is not None else forge.pick(list(KINDS))
    if forge.chance(0.05):
        name = forge.pick([forge.text(), 5, None])
    tensor: dict[str, Any] = {"name": name, "datatype": datatype}
    roll = forge.r.randrange(20)
    if roll < 17:  # data matching the shape, nested or flat
        shape = forge.shape()
        data = forge.shaped(shape, lambda: forge.leaf(kind)) if forge.chance(0.5) \
            else forge.tensor_value(kind, shape)
        if forge.chance(0.4) and shape:
            data = np.asarray(data, dtype=object).reshape(-1).tolist() \
                if math.prod(shape) and isinstance(data, list) else data
    elif roll < 19:  # an attack on the declared shape
        shape = forge.edge_shape() if forge.chance(0.7) else \
            [forge.r.randint(-2, 6) for _ in range(forge.r.randint(0, 7))]
        data = forge.tensor_value(kind) if forge.chance(0.7) else [1.0]
    else:
        shape = forge.pick([[True, 2], ["2"], 3, None, [2.0], [2**64]])
        data = forge.json_value()
    tensor["shape"] = shape
    tensor["data"] = data
    if forge.chance(0.05):
        del tensor[forge.pick(["name", "datatype", "shape", "data"])]
    return tensor


def v2_model_document(forge: Forge, model: ModelMetadata) -> Any:
    """A v2 request for `model`: its inputs, dtypes and shapes, with data mostly well-formed."""
    rows = forge.r.randint(1, 20)
    inputs = []
    for input_spec in model.inputs:
        shape = forge.fitted(input_spec, rows)
        inputs.append({"name": input_spec.name, "datatype": input_spec.dtype.v2,
                       "shape": shape,
                       "data": forge.tensor_value(kind_of(input_spec.dtype), shape)})
    return {"inputs": inputs}


@st.composite
def v2_documents(draw: st.DrawFn, names: list[str] = V2_NAMES) -> Any:
    forge = Forge(draw(seeds))
    if forge.chance(0.05):
        return forge.json_value()
    datatypes = [draw(st.sampled_from(list(dtypes.BY_V2))) if forge.chance(0.95)
                 else forge.pick(["FP8", "", "fp32", 1, None])
                 for _ in range(forge.pick([1, 1, 2, 3]))]
    distinct = forge.r.sample(names, len(names))  # a name twice only sometimes
    tensors: Any = [v2_tensor(forge, datatype, distinct[i % len(distinct)]
                              if forge.chance(0.95) else distinct[0])
                    for i, datatype in enumerate(datatypes)]
    if forge.chance(0.03):
        tensors = forge.pick([[], {}, "x", [tensors[0], tensors[0]]])
    document: dict[str, Any] = {"inputs": tensors}
    if forge.chance(0.3):
        document["id"] = forge.text() if forge.chance(0.9) else 12
    if forge.chance(0.2):
        document["outputs"] = [{"name": forge.text()}] if forge.chance(0.8) \
            else forge.json_value()
    if forge.chance(0.2):
        document["parameters"] = forge.json_value()
    return document


def json_body(forge: Forge, document: Any) -> bytes:
    """`document` as a client might send it: standard JSON with NaN/Infinity literals and
    \\u escapes for surrogates; sometimes with a number no double can hold spliced in, or not
    JSON at all."""
    roll = forge.r.randrange(16)
    if roll == 0:
        return forge.binary(forge.r.randint(0, 40))
    if roll == 1:
        return forge.pick([b"", b"{", b"[" * 3000 + b"]" * 3000, b'{"inputs": [NaN, "\\ud800"]}',
                           b'{"instances": [1e400]}', b"\xef\xbb\xbf{}",
                           b'{"inputs": "\xed\xa0\x80"}', b'{"inputs": [Infinity, -1e999]}'])
    body = json.dumps(document, allow_nan=True).encode()
    if roll == 2 and b"1" in body:
        body = body.replace(b"1", forge.pick([b"1e400", b"-1E+999", b"9" * 400]), 1)
    return body


@st.composite
def json_bodies(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> bytes:
    return json_body(Forge(draw(seeds)), draw(documents))


# --- v2 REST binary tensor data -------------------------------------------------------------


def v2_binary_body(forge: Forge, document: Any) -> tuple[bytes, str | None]:
    """`document` with the data of some inputs moved after the JSON as binary data (Triton's
    binary tensor data extension), and the `Inference-Header-Content-Length` for it: mostly
    as tritonclient sends them; sometimes with sizes that lie, a header length that lies or
    is no number, bytes missing or to spare, or junk in the binary parameters."""
    chunks = []
    if isinstance(document, dict) and isinstance(document.get("inputs"), list):
        for tensor in document["inputs"]:
            if isinstance(tensor, dict) and forge.chance(0.7):
                chunks.append(_binary_input(forge, tensor))
        if forge.chance(0.3):
            document["parameters"] = {"binary_data_output": forge.pick(
                [True, False, True, False, True, 1, "yes", None])}
        if forge.chance(0.1):
            document["outputs"] = [{"name": "y", "parameters": forge.pick(
                [{"binary_data": True}, {"binary_data": "no"}, {"classification": 2},
                 {"shared_memory_region": "r"}, 7])}]
    header = json.dumps(document, allow_nan=True).encode()
    tail = b"".join(chunks)
    roll = forge.r.randrange(12)
    if roll == 0:
        tail = tail[:forge.r.randrange(len(tail))] if tail else b"\0"
    elif roll == 1:
        tail += forge.binary(forge.r.randint(1, 9))
    length: str | None = str(len(header))
    roll = forge.r.randrange(14)
    if roll == 0:
        length = None
    elif roll == 1:
        length = forge.pick(["", "x", "-1", "1e3", " 12", "+5", "\u0663", str(2**64), "0"])
    elif roll == 2:
        length = str(len(header) + len(tail) + forge.r.randint(1, 9))
    elif roll == 3:
        length = str(forge.r.randint(0, len(header)))
    return header + tail, length


def _binary_input(forge: Forge, tensor: dict[str, Any]) -> bytes:
    """Binary data for `tensor`'s declared datatype and shape (mostly the right size), which
    its `parameters` announce in place of its `data`."""
    datatype = tensor.get("datatype")
    dtype = dtypes.BY_V2.get(datatype) if isinstance(datatype, str) else None
    shape = tensor.get("shape")
    count = forge.r.randint(0, 3)
    if isinstance(shape, list) and all(type(d) is int and 0 <= d <= 200 for d in shape) and \
            math.prod(shape) <= 200:
        count = math.prod(shape)
    if dtype is None or forge.chance(0.1):
        data = forge.binary(forge.r.randint(0, 24))
    elif dtype.is_bytes:
        data = forge.length_prefixed(count)
    else:
        data = forge.binary(count * dtype.numpy.itemsize)
    if forge.chance(0.95):
        tensor.pop("data", None)
    size = len(data) if forge.chance(0.85) else forge.pick(
        [-1, True, "8", 2**63, None, len(data) + 1, max(len(data) - 1, 0), 1.0])
    tensor["parameters"] = {"binary_data_size": size}
    return data


@st.composite
def v2_binary_bodies(draw: st.DrawFn, models: list[ModelMetadata] = SIGNATURES
                     ) -> tuple[bytes, str | None]:
    """REST bodies with binary tensor data, for one of `models` or any v2 document."""
    forge = Forge(draw(seeds))
    model = draw(st.sampled_from(models))
    document = draw(v2_documents([s.name for s in model.inputs])) if forge.chance(0.3) \
        else v2_model_document(forge, model)
    return v2_binary_body(forge, document)


@st.composite
def json_values(draw: st.DrawFn) -> Any:
    forge = Forge(draw(seeds))
    return forge.json_value(forge.r.randint(0, 4))


# --- TF Serving gRPC: TensorProto, PredictRequest ---------------------------------------------

KNOWN_TF = [types_pb2.DataType.Value(d.tf) for d in dtypes.BY_V2.values()]
ALL_TF = [*list(types_pb2.DataType.values()), 999, -5]
_INT32 = (-(2**31), 2**31 - 1)
_TF_FIELDS: dict[str, Callable[[Forge], Any]] = {
    "float_val": lambda f: f.pick(EDGE_FLOATS) if f.chance(0.2) else f.r.uniform(-9, 9),
    "double_val": lambda f: f.pick(EDGE_FLOATS) if f.chance(0.2) else f.r.uniform(-9, 9),
    "int_val": lambda f: f.r.randint(*_INT32) if f.chance(0.2) else f.r.randint(-300, 300),
    "int64_val": lambda f: f.r.randint(-(2**63), 2**63 - 1),
    "bool_val": lambda f: f.chance(0.5),
    "string_val": lambda f: f.binary(f.r.randint(0, 6)),
    "half_val": lambda f: f.r.randint(*_INT32) if f.chance(0.3) else f.r.randint(0, 65535),
    "uint32_val": lambda f: f.r.randint(0, 2**32 - 1),
    "uint64_val": lambda f: f.r.randint(0, 2**64 - 1),
}


def tf_field(dtype: dtypes.DType) -> str:
    """The typed field TF carries `dtype`'s values in (TF's ProtoHelper)."""
    return {"DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_INT64": "int64_val",
            "DT_BOOL": "bool_val", "DT_STRING": "string_val", "DT_HALF": "half_val",
            "DT_BFLOAT16": "half_val", "DT_UINT32": "uint32_val",
            "DT_UINT64": "uint64_val"}.get(dtype.tf, "int_val")


def tensor_proto(forge: Forge, dtype_enum: int, how: str) -> tensor_pb2.TensorProto:
    if forge.chance(0.8):
        dims = forge.shape()
    else:
        dims = forge.edge_shape() if forge.chance(0.5) else \
            [forge.pick([*EDGE_DIMS, 0, 1, 2, 3]) for _ in range(forge.r.randint(0, 4))]
    proto = tensor_pb2.TensorProto(dtype=dtype_enum, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    known = dtypes.BY_TF.get(types_pb2.DataType.Name(dtype_enum)) \
        if dtype_enum in types_pb2.DataType.values() else None
    count = math.prod(dims) if all(0 <= d <= 1000 for d in dims) else 1
    count = count if count <= 200 else 1
    if how == "content" and known is not None and not known.is_bytes:
        size = count * known.numpy.itemsize
        proto.tensor_content = forge.binary(size if forge.chance(0.8) else
                                            forge.r.randint(0, size + 8))
    elif how in ("values", "one", "some"):
        field = tf_field(known) if known is not None and forge.chance(0.8) \
            else forge.pick(sorted(_TF_FIELDS))
        n = {"values": count, "one": 1}.get(how, forge.r.randint(0, 8))
        getattr(proto, field).extend(_TF_FIELDS[field](forge) for _ in range(n))
    return proto


@st.composite
def predict_requests(draw: st.DrawFn, model: str = "demo",
                     names: list[str] = V2_NAMES) -> predict_pb2.PredictRequest:
    forge = Forge(draw(seeds))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for _ in range(forge.pick([0, 1, 1, 2, 3])):
        dtype_enum = draw(st.sampled_from(KNOWN_TF)) if forge.chance(0.9) else \
            forge.pick(ALL_TF)
        how = forge.pick(["content", "values", "values", "one", "some", "none"])
        name = forge.pick(names) if forge.chance(0.9) else forge.text(3).encode(
            "utf-8", "replace").decode()
        request.inputs[name].CopyFrom(tensor_proto(forge, dtype_enum, how))
    if forge.chance(0.1):  # bytes a client could send, mangled
        wire = bytearray(request.SerializeToString())
        for _ in range(forge.r.randint(1, 4)):
            if wire:
                wire[forge.r.randrange(len(wire))] = forge.r.randrange(256)
        try:
            return predict_pb2.PredictRequest.FromString(bytes(wire))
        except Exception:  # not a message at all: gRPC refuses it before any servicer
            return request
    return request


# --- v2 gRPC: ModelInferRequest ---------------------------------------------------------------

_UINT32, _INT64 = (0, 2**32 - 1), (-(2**63), 2**63 - 1)
_CONTENTS: dict[str, tuple[str, Callable[[Forge], Any]]] = {
    "BOOL": ("bool_contents", lambda f: f.chance(0.5)),
    "UINT8": ("uint_contents", lambda f: f.r.randint(0, 300)),
    "UINT16": ("uint_contents", lambda f: f.r.randint(*_UINT32) if f.chance(0.2)
               else f.r.randint(0, 70000)),
    "UINT32": ("uint_contents", lambda f: f.r.randint(*_UINT32)),
    "UINT64": ("uint64_contents", lambda f: f.r.randint(0, 2**64 - 1)),
    "INT8": ("int_contents", lambda f: f.r.randint(-200, 200)),
    "INT16": ("int_contents", lambda f: f.r.randint(*_INT32)),
    "INT32": ("int_contents", lambda f: f.r.randint(*_INT32)),
    "INT64": ("int64_contents", lambda f: f.r.randint(*_INT64)),
    "FP32": ("fp32_contents", lambda f: f.pick(EDGE_FLOATS) if f.chance(0.2)
             else f.r.uniform(-9, 9)),
    "FP64": ("fp64_contents", lambda f: f.r.uniform(-9, 9)),
    "BYTES": ("bytes_contents", lambda f: f.binary(f.r.randint(0, 6))),
}


@st.composite
def infer_requests(draw: st.DrawFn, model: str = "demo",
                   names: list[str] = V2_NAMES) -> pb.ModelInferRequest:
    forge = Forge(draw(seeds))
    request = pb.ModelInferRequest(model_name=model)
    raw = forge.chance(0.5)
    datatypes = [draw(st.sampled_from(list(dtypes.BY_V2))) if forge.chance(0.95) else "FP8"
                 for _ in range(forge.pick([0, 1, 1, 2, 3]))]
    for datatype in datatypes:
        if forge.chance(0.8):
            shape = forge.shape()
        else:
            shape = forge.edge_shape() if forge.chance(0.5) else \
                [forge.pick([*EDGE_DIMS, 0, 1, 2]) for _ in range(forge.r.randint(0, 4))]
        name = forge.pick(names) if forge.chance(0.9) else forge.text(3).encode(
            "utf-8", "replace").decode()
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        count = math.prod(shape) if all(0 <= d <= 200 for d in shape) else 1
        count = count if count <= 200 else forge.r.randint(0, 3)
        dtype = dtypes.BY_V2.get(datatype)
        if raw:
            if dtype is not None and dtype.is_bytes and forge.chance(0.8):
                request.raw_input_contents.append(forge.length_prefixed(count))
            elif dtype is not None and not dtype.is_bytes and forge.chance(0.8):
                request.raw_input_contents.append(forge.binary(count * dtype.numpy.itemsize))
            else:
                request.raw_input_contents.append(forge.binary(forge.r.randint(0, 24)))
        elif datatype in _CONTENTS:
            field, value = _CONTENTS[datatype]
            n = count if forge.chance(0.8) else forge.r.randint(0, 5)
            getattr(tensor.contents, field).extend(value(forge) for _ in range(n))
    if raw and forge.chance(0.1):
        request.raw_input_contents.append(b"\0\0\0\0")  # one more than there are inputs
    if forge.chance(0.3):
        request.id = forge.text(4).encode("utf-8", "replace").decode()
    return request
