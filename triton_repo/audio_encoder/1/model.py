"""Triton adapter for the audio encoder (runtime/server/encoder_model.py does the work).

Log-mel features [N, mel, frames] float32 -> embeddings [N, T, hidden] float32.
"""

import triton_python_backend_utils as pb_utils

from runtime.server.encoder_model import EncoderModel


class TritonPythonModel(EncoderModel):
    component = "audio_encoder"
    pb_utils = pb_utils
