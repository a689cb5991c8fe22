"""Compile the Triton kernels ahead of time for NVIDIA targets, without a GPU.

Run as a script in a process without TRITON_INTERPRET (the interpreter replaces ``triton.jit``):
it compiles every kernel for sm_80 and sm_90 over the constexpr feature flags (softcap and the
token_stats extras included) and prints one JSON
line per kernel with register and spill counts and whether the row offset is 64-bit.
"""
import itertools
import json
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from actfocus_kernels.constants import FLOAT32_MAX, RATIO_LOG_CLAMP
from actfocus_kernels.triton.launch import row_launch_config
from actfocus_kernels.triton.policy_loss import _policy_loss_kernel
from actfocus_kernels.triton.row_gradient import _row_gradient_kernel
from actfocus_kernels.triton.token_stats import _token_stats_kernel

VOCAB = 151936


def pointer(dtype):
    return f"*{dtype}"


def compile_kernel(fn, signature, constexprs, arch, num_warps):
    source = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    ptx = kernel.asm["ptx"]
    # the row base offset must be computed in 64 bits (N * V exceeds 2**31 at N=16384, V=151936)
    wide = bool(re.search(r"mul(\.lo)?\.s64|mul\.wide", ptx))
    return {**ptxas_usage(ptx), "wide_offsets": wide}


def ptxas_usage(ptx: str) -> dict:
    """Registers and spill bytes as reported by Triton's bundled ptxas."""
    target = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    # the ptxas Triton itself uses for this arch: triton 3.9 (torch 2.15) emits PTX 9.4, which its legacy
    # bin/ptxas (CUDA 12.9) rejects; it assembles sm_90 and newer with bin/ptxas-blackwell
    ptxas = get_ptxas(int(re.match(r"sm_(\d+)", target).group(1))).path
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
        source.write(ptx)
        source.flush()
        report = subprocess.run([str(ptxas), f"-arch={target}", "-v", source.name, "-o", "/dev/null"],
                                capture_output=True, text=True, check=True).stderr
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
    return {"regs": int(re.search(r"Used (\d+) registers", report).group(1)), "spills": spills}


TRANSFORM_SIG = {"temperature": "fp32", "row_temperature": "fp32", "value_scale": "fp32", "tanh_scale": "fp32",
                 "softcap": "fp32", "logit_scale": "fp32", "ignore_index": "i32"}


def main():
    results = []
    for arch, dtype in itertools.product((80, 90), ("bf16", "fp32")):
        block_v, num_warps = row_launch_config(VOCAB, 2 if dtype == "bf16" else 4)
        base = {"V": VOCAB, "BLOCK_V": block_v, "FLT_MAX": FLOAT32_MAX}
        stats_sig = {"logits_ptr": pointer(dtype), "targets_ptr": "*i64", "logp_ptr": "*fp32",
                     "energy_ptr": "*fp32", "entropy_ptr": "*fp32", "log_sum_sq_ptr": "*fp32", "mean_ptr": "*fp32",
                     "top1_ptr": "*i8", "stride_logits": "i64", **TRANSFORM_SIG}
        for softcap, extras in itertools.product((False, True), (False, True)):
            stats_block, stats_warps = row_launch_config(VOCAB, 2 if dtype == "bf16" else 4, extras)
            flags = {**base, "BLOCK_V": stats_block, "HAS_SOFTCAP": softcap, "EXTRAS": extras}
            info = compile_kernel(_token_stats_kernel, stats_sig, flags, arch, stats_warps)
            results.append({"kernel": "token_stats", "arch": arch, "dtype": dtype, "softcap": softcap,
                            "extra_stats": extras, **info})
        gradient_sig = {"logits_ptr": pointer(dtype), "targets_ptr": "*i64", "target_coef_ptr": "*fp32",
                        "prob_coef_ptr": "*fp32", "centred_coef_ptr": "*fp32", "dlogits_ptr": pointer(dtype),
                        "stride_logits": "i64", "stride_dlogits": "i64", **TRANSFORM_SIG}
        for softcap in (False, True):
            grad_block, grad_warps = row_launch_config(VOCAB, 2 if dtype == "bf16" else 4, softcap)
            info = compile_kernel(_row_gradient_kernel, gradient_sig,
                                  {**base, "BLOCK_V": grad_block, "HAS_SOFTCAP": softcap}, arch, grad_warps)
            results.append({"kernel": "row_gradient", "arch": arch, "dtype": dtype, "softcap": softcap, **info})
        loss_sig = {name: "*fp32" for name in (
            "old_logp_ptr", "advantages_ptr", "ref_logp_ptr", "weights_ptr", "scale_ptr", "token_loss_ptr",
            "logp_ptr", "energy_ptr", "entropy_ptr", "ratio_ptr")}
        loss_sig.update({"logits_ptr": pointer(dtype), "targets_ptr": "*i64", "clipped_ptr": "*i8",
                         "dlogits_ptr": pointer(dtype), "stride_logits": "i64", "stride_dlogits": "i64",
                         **TRANSFORM_SIG, "clip_low": "fp32", "clip_high": "fp32", "dual_clip": "fp32",
                         "kl_coef": "fp32", "entropy_coef": "fp32"})
        cases = [(has_extras, write_grad, False)
                 for has_extras, write_grad in itertools.product((False, True), repeat=2)]
        cases += [(True, write_grad, True) for write_grad in (False, True)]
        for has_extras, write_grad, softcap in cases:
            flags = {**base, "HAS_OLD_LOGP": True, "HAS_KL": has_extras, "KL_TYPE": 3,
                     "HAS_DUAL_CLIP": has_extras, "HAS_ENTROPY": has_extras, "WRITE_GRAD": write_grad,
                     "LOG_CLAMP": RATIO_LOG_CLAMP, "HAS_SOFTCAP": softcap}
            info = compile_kernel(_policy_loss_kernel, loss_sig, flags, arch, num_warps)
            results.append({"kernel": "policy_loss", "arch": arch, "dtype": dtype, "extras": has_extras,
                            "write_grad": write_grad, "softcap": softcap, **info})
    for row in results:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
