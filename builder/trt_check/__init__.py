"""Can TensorRT's ONNX parser take this graph? A check that runs on CPU, without TensorRT.

`check_graph(path)` returns a `CheckReport`; `builder.trt_check.report` prints reports as a table.
"""

from builder.trt_check.checker import check_graph, check_model
from builder.trt_check.findings import CheckReport, Finding
from builder.trt_check.support import TARGET_TENSORRT

__all__ = ["TARGET_TENSORRT", "CheckReport", "Finding", "check_graph", "check_model"]
