"""What a step's exception means for the run's status: ``oom`` or ``failed``."""

from __future__ import annotations

import torch

# Out-of-memory errors that reach Python as a plain RuntimeError: cuBLAS / cuDNN /
# cuFFT / cuSOLVER / cuSPARSE workspace allocations, the CUDA runtime and driver APIs,
# and PyTorch's CPU allocator.
OOM_MARKERS = (
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUSPARSE_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
    "cudaErrorMemoryAllocation",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "can't allocate memory",
)


def failure_status(exc: BaseException) -> str:
    """``oom`` for an out-of-memory error of any origin, ``failed`` for anything else."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS):
        return "oom"
    return "failed"
