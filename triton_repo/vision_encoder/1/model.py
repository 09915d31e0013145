"""Triton adapter for the vision encoder (runtime/server/encoder_model.py does the work).

Images [N, 3, H, W] float32 -> embeddings [N, T, hidden] float32.
"""

import triton_python_backend_utils as pb_utils

from runtime.server.encoder_model import EncoderModel


class TritonPythonModel(EncoderModel):
    component = "vision_encoder"
    pb_utils = pb_utils
