"""What TensorRT's ONNX parser accepts, encoded from onnx-tensorrt's operator support matrix.

Source: onnx/onnx-tensorrt, docs/operators.md as shipped for TensorRT 10.15 ("TensorRT 10.15 supports
operators in the inclusive range of opset 9 to opset 24"),
https://github.com/onnx/onnx-tensorrt/blob/release/10.15-GA/docs/operators.md
TensorRT 11.x parses with the same onnx-tensorrt code line; 10.15 is the older of the two parsers
we build with (JetPack ships 10.x), so a graph that passes here is accepted by both.
Operators marked N in that table are simply absent here. Types are ONNX TensorProto names.
"""

from __future__ import annotations

TARGET_TENSORRT = "10.15"
SOURCE = "onnx/onnx-tensorrt docs/operators.md (release/10.15-GA)"
OPSET_RANGE = (9, 24)
DEFAULT_DOMAINS = ("", "ai.onnx")

# Every tensor type the parser knows. UINT8 only as a network input/output; DOUBLE is cast down.
PARSER_TYPES = frozenset(
    {"DOUBLE", "FLOAT", "FLOAT16", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT4E2M1", "INT32", "INT64", "INT8",
     "INT4", "UINT8", "BOOL"}
)  # fmt: skip

_F = "FLOAT FLOAT16 BFLOAT16"
_FI = _F + " INT32 INT64"
_FIB = _FI + " BOOL"

# op -> the types of its data ("T") tensor, as listed in the matrix's "Supported Types" column.
_TABLE = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": "BOOL", "ArgMax": _FI, "ArgMin": _FI,
    "Asin": _F, "Asinh": _F, "Atan": _F, "Atanh": _F, "Attention": _F + " INT8 FLOAT8E4M3FN",
    "AveragePool": _F, "BatchNormalization": _F, "BlackmanWindow": "FLOAT FLOAT16",
    "Cast": _FIB + " UINT8", "CastLike": _FIB + " UINT8", "Ceil": _F, "Celu": _F, "Clip": _F,
    "Concat": _FIB, "Constant": _FIB + " FLOAT8E4M3FN FLOAT4E2M1 INT4",
    "ConstantOfShape": _FIB + " FLOAT8E4M3FN FLOAT4E2M1 INT4", "Conv": _F, "ConvTranspose": _F,
    "Cos": _F, "Cosh": _F, "CumSum": _F, "DeformConv": "FLOAT FLOAT16", "DepthToSpace": _FI,
    "DequantizeLinear": "INT8 FLOAT8E4M3FN FLOAT4E2M1 INT4", "Div": _FI, "Dropout": _F,
    "Einsum": _F, "Elu": _F, "Equal": _FI, "Erf": _F, "Exp": _F, "Expand": _FIB, "EyeLike": _FIB,
    "Flatten": _FIB, "Floor": _F, "Gather": _FIB, "GatherElements": _FIB, "GatherND": _FIB,
    "Gelu": _FI + " INT8", "Gemm": _F, "GlobalAveragePool": _F, "GlobalLpPool": _F,
    "GlobalMaxPool": _F, "Greater": _FI, "GreaterOrEqual": _FI, "GridSample": "FLOAT FLOAT16",
    "GroupNormalization": _F, "GRU": _F, "HammingWindow": "FLOAT FLOAT16",
    "HannWindow": "FLOAT FLOAT16", "HardSigmoid": _F, "HardSwish": _F, "Hardmax": _F,
    "Identity": _FIB, "If": _FIB, "ImageScaler": _F, "InstanceNormalization": _F, "IsInf": _F,
    "IsNaN": _FI, "LayerNormalization": _F, "LeakyRelu": _F, "Less": _FI, "LessOrEqual": _FI,
    "Log": _F, "LogSoftmax": _F, "Loop": _FIB, "LRN": _F, "LSTM": _F, "LpNormalization": _F,
    "LpPool": _F, "MatMul": _F, "Max": _FI, "MaxPool": _F, "Mean": _FI + " FLOAT8E4M3FN",
    "MeanVarianceNormalization": _F, "Min": _FI, "Mish": "FLOAT FLOAT16", "Mod": _FI, "Mul": _FI,
    "Neg": _FI, "NonMaxSuppression": "FLOAT FLOAT16", "NonZero": "FLOAT FLOAT16", "Not": "BOOL",
    "OneHot": _FIB, "Or": "BOOL", "Pad": _FI, "ParametricSoftplus": _F, "Pow": _FI, "PRelu": _F,
    "QuantizeLinear": _F, "RandomNormal": _F, "RandomNormalLike": _F, "RandomUniform": _F,
    "RandomUniformLike": _F, "Range": _FI, "Reciprocal": _F, "ReduceL1": _FI, "ReduceL2": _FI,
    "ReduceLogSum": _FI, "ReduceLogSumExp": _FI, "ReduceMax": _FI, "ReduceMean": _FI,
    "ReduceMin": _FI, "ReduceProd": _FI, "ReduceSum": _FI, "ReduceSumSquare": _FI, "Relu": _FI,
    "Reshape": _FIB, "Resize": _F, "ReverseSequence": _FIB, "RMSNormalization": _F, "RNN": _F,
    "RoiAlign": "FLOAT FLOAT16", "RotaryEmbedding": _F, "Round": _F, "STFT": "FLOAT",
    "ScaledTanh": _F, "Scan": _F, "Scatter": _FI, "ScatterElements": _FI, "ScatterND": _FI,
    "Selu": _F, "Shape": _FIB, "Shrink": _FI, "Sigmoid": _F, "Sign": _FI, "Sin": _F, "Sinh": _F,
    "Size": _FIB, "Slice": _FIB, "Softmax": _F, "Softplus": _F, "Softsign": _F,
    "SpaceToDepth": _FI, "Split": _FIB, "Sqrt": _F, "Squeeze": _FIB, "Sub": _FI, "Sum": _FI,
    "Tan": _F, "Tanh": _F, "TensorScatter": _F + " INT32", "ThresholdedRelu": _F, "Tile": _FIB,
    "TopK": _FI, "Transpose": _FIB, "Trilu": _FIB, "Unsqueeze": _FIB, "Upsample": _F,
    "Where": _FIB, "Xor": "BOOL",
}  # fmt: skip
SUPPORTED_OPS: dict[str, frozenset[str]] = {op: frozenset(types.split()) for op, types in _TABLE.items()}

# Which input carries the "T" type the matrix lists (default: input 0). Where's input 0 is the
# boolean condition; Range's inputs are scalars of T; Shape/Size only read their input's shape.
DATA_INPUT = {"Where": 1}
SHAPE_ONLY = frozenset({"Shape", "Size"})
