"""The one table of GGUF output types (`convert --outtype`/`--quantization`, `optimize`, the config's gguf.outtypes): for each,
who makes it (this package's writer directly, or llama.cpp's quantizer from an f16/f32 file this package
writes) and its types as the `gguf` package names them. Plain names, no `gguf`, numpy or torch import, so the
CLI's help and the workflow read it for free; `gguf.LlamaFileType[file_type]`,
`gguf.GGMLQuantizationType[main_type]` and `llama_cpp.LLAMA_FTYPE_<file_type>` turn them into values."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputType:
    name: str  # as `convert --outtype` takes it
    main_type: str  # tensor type of most matrices (GGMLQuantizationType name); llama.cpp picks others for some
    file_type: str  # the file-type tag (LlamaFileType name; llama_cpp's constant is LLAMA_FTYPE_<file_type>)
    by_llama_cpp: bool  # made by llama.cpp's quantizer (needs llama-cpp-python), else written directly

    @property
    def llama_cpp_ftype(self) -> str:
        return f"LLAMA_FTYPE_{self.file_type}"


def _direct(name: str, main_type: str, file_type: str) -> OutputType:
    return OutputType(name, main_type, file_type, by_llama_cpp=False)


def _quantized(name: str, main_type: str) -> OutputType:
    return OutputType(name, main_type, f"MOSTLY_{name.upper()}", by_llama_cpp=True)


# Main tensor types of llama.cpp's quantizer: llama_model_quantize_impl of the llama.cpp llama-cpp-python pins.
OUTPUT_TYPES = {t.name: t for t in (
    _direct("f32", "F32", "ALL_F32"), _direct("f16", "F16", "MOSTLY_F16"), _direct("bf16", "BF16", "MOSTLY_BF16"),
    _direct("q8_0", "Q8_0", "MOSTLY_Q8_0"),
    _quantized("q4_0", "Q4_0"), _quantized("q4_1", "Q4_1"), _quantized("q5_0", "Q5_0"), _quantized("q5_1", "Q5_1"),
    _quantized("q2_k", "Q2_K"), _quantized("q3_k_s", "Q3_K"), _quantized("q3_k_m", "Q3_K"),
    _quantized("q3_k_l", "Q3_K"), _quantized("q4_k_s", "Q4_K"), _quantized("q4_k_m", "Q4_K"),
    _quantized("q5_k_s", "Q5_K"), _quantized("q5_k_m", "Q5_K"), _quantized("q6_k", "Q6_K"),
)}
OUTTYPES = tuple(OUTPUT_TYPES)  # every name, direct ones first
DIRECT_OUTTYPES = tuple(name for name, t in OUTPUT_TYPES.items() if not t.by_llama_cpp)
LLAMACPP_OUTTYPES = tuple(name for name, t in OUTPUT_TYPES.items() if t.by_llama_cpp)
INTERMEDIATE_OUTTYPES = ("f16", "f32")  # what llama.cpp's quantizer may start from

# PersLM's bit widths (`optimize --quantization 4bit|8bit`, also taken by `convert --quantization`) as the GGUF
# types they mean: 8bit is q8_0 (8-bit blocks of 32, written directly by the gguf package); 4bit is q4_k_m
# (llama.cpp's usual 4-bit k-quant, a few tensors at 6 bits; needs llama-cpp-python).
QUANTIZATION_TYPES = {"4bit": "q4_k_m", "8bit": "q8_0"}


def quantization_outtype(quantization: str) -> str:
    """The GGUF output type a `--quantization` value means: 4bit, 8bit or any output type's name."""
    outtype = QUANTIZATION_TYPES.get(quantization.lower(), quantization.lower())
    if outtype not in OUTPUT_TYPES:
        raise ValueError(f"unknown quantization {quantization!r}; use {' or '.join(QUANTIZATION_TYPES)} or a GGUF "
                         f"type ({', '.join(OUTTYPES)})")
    return outtype
