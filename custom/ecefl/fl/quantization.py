"""NVFlare's message quantization for this model's messages (`--quantize TYPE` of every federated job command).

NVFlare 2.9's ModelQuantizer / ModelDequantizer filters (nvflare.app_opt.pt.quantization) quantize each entry of a
weights message and reject any entry that is not fp32 / fp16 / bf16 ("Invalid source data type: int64"). MONAI's
SwinUNETR state dict holds four int64 `relative_position_index` buffers, so the plain filters fail the job's first
message. These subclasses hand non-float entries through unchanged (indices must not be rounded anyway) and leave
every float tensor to NVFlare's own code. Importing this module needs bitsandbytes (`pip install 'ecefl[gpu]'`),
which NVFlare's quantization module imports; job_options.check_quantization says so before a job is built.
"""
from __future__ import annotations

from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer

_QUANTIZABLE = ("float32", "float16", "bfloat16")  # what NVFlare's filter accepts


def _dtype_name(value) -> str:
    return str(getattr(value, "dtype", "")).rsplit(".", 1)[-1]


class StateDictQuantizer(ModelQuantizer):
    """NVFlare's ModelQuantizer on the float entries of a message; the others travel as they are."""

    def quantization(self, params: dict, fl_ctx):
        floats = {k: v for k, v in params.items() if _dtype_name(v) in _QUANTIZABLE}
        quantized, state, source_types = super().quantization(floats, fl_ctx)
        # a new dict in the original order: the sender's own model dict is left as it was
        return {k: quantized.get(k, v) for k, v in params.items()}, state, source_types


class StateDictDequantizer(ModelDequantizer):
    """NVFlare's ModelDequantizer on the entries its quantizer recorded; the others are handed through."""

    def dequantization(self, params: dict, quant_state: dict, quantization_type: str, source_datatype: dict,
                       fl_ctx):
        quantized = {k: v for k, v in params.items() if k in source_datatype}
        back = super().dequantization(quantized, quant_state, quantization_type, source_datatype, fl_ctx)
        return {k: back.get(k, v) for k, v in params.items()}
