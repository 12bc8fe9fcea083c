"""Linear layers of a decoding step (1–4 rows) as one Triton kernel that reads each weight matrix once.

Why: decoding a 7B model at batch 1–2 is bound by reading its weights, and cuBLAS's kernels for one or two
rows read them at 2.1–2.7 TB/s on an H100 (3.35 TB/s peak). This kernel streams each strip of weight rows once
and multiplies it with every input row held in registers: 2.7–3.05 TB/s for one row and 2.4–2.9 for two at
LLaVA-7B's shapes (docs/benchmarks.md). Only the decoding step uses it (`small_batch_linears`), on GPUs with
Triton (which CUDA builds of torch include).

    x (rows, K) @ weight (N, K).T + bias (N,) → (rows, N), rows ≤ MAX_ROWS, accumulated in float32
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

MAX_ROWS = 4
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    def _configs():
        # Measured on an H100 (bench/bench_kernels.py, docs/benchmarks.md): 2–8 columns a program and K tiles
        # of 512–2048 won at every LLaVA-7B shape, with 2–8 warps and mostly 4 pipeline stages; tiles on tensor
        # cores (rows padded to 16), reductions inside the loop and 16 columns never won.
        return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=4)
                for n in (2, 4, 8) for k in (512, 1024, 2048) for w in (2, 4, 8) if n * k <= 8192]

    @triton.autotune(configs=_configs(), key=["N", "K", "ROWS"], cache_results=True)
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
                        "EVEN_N": lambda args: args["N"] % args["BLOCK_N"] == 0})
    @triton.jit
    def _small_batch_linear_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, N, K, stride_x, stride_w, stride_out,
                                   ROWS: tl.constexpr, ROWS_P2: tl.constexpr, HAS_BIAS: tl.constexpr,
                                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                                   EVEN_N: tl.constexpr):
        # One program: BLOCK_N output columns for every row. Products are kept as partial sums (rows, BLOCK_N,
        # BLOCK_K) and reduced once at the end, so the loop is only loads and fused multiply-adds; tiles that
        # fit the matrix exactly are loaded without masks.
        columns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        column_ok = columns < N
        rows = tl.arange(0, ROWS_P2)
        row_ok = rows < ROWS
        partial = tl.zeros((ROWS_P2, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            ks = start + tl.arange(0, BLOCK_K)
            w_ptrs = w_ptr + columns[:, None] * stride_w + ks[None, :]
            x_ptrs = x_ptr + rows[:, None] * stride_x + ks[None, :]
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptrs, mask=column_ok[:, None] & (ks < K)[None, :], other=0.0,
                            eviction_policy="evict_first")
            if EVEN_K:
                x = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
            else:
                x = tl.load(x_ptrs, mask=row_ok[:, None] & (ks < K)[None, :], other=0.0)
            partial += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        out = tl.sum(partial, axis=2)
        if HAS_BIAS:
            out += tl.load(bias_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + columns[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & column_ok[None, :])


@torch.library.custom_op("sectensor::small_batch_linear", mutates_args=())
def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x of at most MAX_ROWS rows (all leading dimensions together)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    n, k = weight.shape
    out = torch.empty(rows.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    with torch.cuda.device(x.device):  # Triton launches on the current device, which may not be the model's
        _small_batch_linear_kernel[grid](
            rows, weight, bias if bias is not None else weight, out, n, k, rows.stride(0), weight.stride(0),
            out.stride(0), ROWS=rows.shape[0], ROWS_P2=triton.next_power_of_2(rows.shape[0]), HAS_BIAS=bias is not None)
    return out.reshape(*x.shape[:-1], n)


@small_batch_linear.register_fake
def _(x, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (x.is_cuda and x.dtype in _DTYPES and weight.dtype == x.dtype and weight.dim() == 2
            and weight.stride(1) == 1 and 0 < x.numel() <= MAX_ROWS * x.shape[-1]
            and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous())))


class _SmallBatchLinears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _fits(x, weight, bias):
                return small_batch_linear(x, weight, bias)
        return func(*args, **kwargs)


def small_batch_linears(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Within this context, linear layers over at most MAX_ROWS rows on a GPU run `small_batch_linear`."""
    return _SmallBatchLinears() if enabled and available() else contextlib.nullcontext()
