"""Linear layers of a decoding step (1–16 rows) as one Triton kernel that reads each weight matrix once.

Why: decoding a 7B model at batch 1–2 is bound by reading its weights, and cuBLAS's kernels for a few rows read
them at 2.1–2.7 TB/s on an H100 (3.35 TB/s peak). This kernel streams each strip of weight rows once and multiplies
it with every input row, on CUDA cores (the rows held in registers) or on tensor cores (the rows padded to 16),
whichever is faster for the shape: 2.7–3.05 TB/s for one row at LLaVA-7B's shapes (docs/benchmarks.md). Only the
decoding step uses it (`small_batch_linears`), on GPUs with Triton (which CUDA builds of torch include).

    x (rows, K) @ weight (N, K).T + bias (N,) → (rows, N), rows ≤ MAX_ROWS[dtype], accumulated in float32
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

# Rows the kernel takes, by dtype: 16-bit products go to tensor cores, where up to 16 rows cost what one costs;
# float32 stays on CUDA cores (tensor cores would round it to TF32), where partial sums grow with the rows.
MAX_ROWS = {torch.bfloat16: 16, torch.float16: 16, torch.float32: 4}


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    def _configs():
        # Measured on an H100 (bench/bench_kernels.py, docs/benchmarks.md). On CUDA cores: 2–8 columns a program
        # and K tiles of 512–2048 won at one and two rows at every LLaVA-7B shape, with 2–8 warps. On tensor cores
        # (a strip of weight rows times the rows padded to 16): 32 or 64 columns, K tiles of 128–512, 4 warps and
        # 4 or 5 stages won from three rows on; their time hardly depends on the number of rows.
        cuda_cores = [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "ON_TENSOR_CORES": False}, num_warps=w, num_stages=4)
                      for n in (2, 4, 8) for k in (512, 1024, 2048) for w in (2, 4, 8) if n * k <= 8192]
        tensor_cores = [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "ON_TENSOR_CORES": True}, num_warps=4, num_stages=s)
                        for n in (32, 64) for k in (128, 256, 512) for s in (4, 5) if n * k * 2 * s <= 160 * 1024]
        return cuda_cores + tensor_cores

    def _prune_configs(configs, named_args, **kwargs):
        # float32 stays on CUDA cores (`MAX_ROWS`). From three rows on, CUDA cores hold too many partial sums and
        # lose to tensor cores by 25–35 % (docs/benchmarks.md), so they are not tried.
        if named_args["w_ptr"].dtype == torch.float32:
            return [config for config in configs if not config.kwargs["ON_TENSOR_CORES"]]
        if kwargs.get("ROWS", named_args.get("ROWS")) > 2:
            return [config for config in configs if config.kwargs["ON_TENSOR_CORES"]]
        return configs

    @triton.autotune(configs=_configs(), key=["N", "K", "ROWS"], cache_results=True,
                     prune_configs_by={"early_config_prune": _prune_configs})
    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
                        "EVEN_N": lambda args: args["N"] % args["BLOCK_N"] == 0,
                        "ROW_TILE": lambda args: (16 if args["ON_TENSOR_CORES"]
                                                  else triton.next_power_of_2(args["ROWS"]))})
    @triton.jit
    def _small_batch_linear_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, N, K, stride_x, stride_w, stride_out,
                                   ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_K: tl.constexpr, ON_TENSOR_CORES: tl.constexpr, ROW_TILE: tl.constexpr,
                                   EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
        # One program: BLOCK_N output columns for every row. On CUDA cores, products are kept as partial sums
        # (rows, BLOCK_N, BLOCK_K) and reduced once at the end, so the loop is only loads and fused multiply-adds.
        # On tensor cores, the strip (BLOCK_N, BLOCK_K) is multiplied with the rows padded to 16, (BLOCK_K, 16):
        # the weights are the product's large operand, so padding the rows costs no memory traffic. Tiles that fit
        # the matrix exactly are loaded without masks.
        columns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        column_ok = columns < N
        rows = tl.arange(0, ROW_TILE)
        row_ok = rows < ROWS
        if ON_TENSOR_CORES:
            accumulator = tl.zeros((BLOCK_N, ROW_TILE), dtype=tl.float32)
        else:
            partial = tl.zeros((ROW_TILE, BLOCK_N, BLOCK_K), dtype=tl.float32)
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
            if ON_TENSOR_CORES:
                accumulator = tl.dot(w, tl.trans(x), accumulator)
            else:
                partial += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
        if ON_TENSOR_CORES:
            out = tl.trans(accumulator)
        else:
            out = tl.sum(partial, axis=2)
        if HAS_BIAS:
            out += tl.load(bias_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + columns[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & column_ok[None, :])


@torch.library.custom_op("sectensor::small_batch_linear", mutates_args=())
def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x of at most `MAX_ROWS[x.dtype]` rows (all leading dimensions together)."""
    return _launch(_small_batch_linear_kernel, x, weight, bias)


def _launch(kernel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Runs `kernel` (the autotuned kernel, or a benchmark's variant of it with other tiles) on x's rows."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    n, k = weight.shape
    out = torch.empty(rows.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    with torch.cuda.device(x.device):  # Triton launches on the current device, which may not be the model's
        kernel[grid](rows, weight, bias if bias is not None else weight, out, n, k, rows.stride(0), weight.stride(0),
                     out.stride(0), ROWS=rows.shape[0], HAS_BIAS=bias is not None)
    return out.reshape(*x.shape[:-1], n)


@small_batch_linear.register_fake
def _(x, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (x.is_cuda and x.dtype in MAX_ROWS and weight.dtype == x.dtype and weight.dim() == 2
            and weight.stride(1) == 1 and 0 < x.numel() <= MAX_ROWS[x.dtype] * x.shape[-1]
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
    """Within this context, linear layers over at most `MAX_ROWS[dtype]` rows on a GPU run `small_batch_linear`."""
    return _SmallBatchLinears() if enabled and available() else contextlib.nullcontext()
