"""Compile every Triton kernel variant the wrappers launch, for a CUDA architecture, on a machine without a GPU.

    python -m explorer.kernels.compile_check --arch 90      # Hopper (H100 / H200); prints one line per variant

The CPU test suite runs the kernels under TRITON_INTERPRET=1, which is lenient where the compiler is
not (for example about module globals); this check runs the real front end, the LLVM lowering and
ptxas (shipped with the triton wheel), so a kernel that would not compile on a GPU fails here.
Run it with TRITON_INTERPRET unset, in a fresh process (the interpreter re-decorates triton itself).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time

ARGUMENT_TYPES = {  # scalar and pointer types, as the wrappers pass them (float32 tensors unless a variant says)
    "stride_row": "i64", "stride_h": "i64", "stride_w": "i64", "stride_emb": "i64", "n_rows": "i32", "V": "i32",
    "D": "i32", "offset": "i64", "seedmix": "i32", "temperature": "fp32", "rows_ptr": "*i64", "kth_ptr": "*fp32",
    "tok_ptr": "*i64", "prob_ptr": "*fp32", "margin_ptr": "*fp32", "ent_ptr": "*fp32", "mean_ptr": "*fp32",
    "out_ptr": "*fp32", "sxb": "i64", "sxn": "i64", "syb": "i64", "sym": "i64", "N": "i32", "M": "i32", "L": "i32",
    "span": "i32", "splits": "i32", "stat_ptr": "*fp32", "idx_ptr": "*i32", "part_ptr": "*fp32",
}


def variants():
    """(name, kernel, pointer dtype, constexpr values) for each specialisation the wrappers can launch."""
    from explorer.kernels import triton_embedding, triton_energy, triton_sample

    for dtype in ("fp32", "bf16"):
        for sample, rows, floor in ((True, False, False), (False, True, False), (True, True, True)):
            yield (f"sample_and_score[{dtype} sample={sample} rows={rows} top_k_or_p={floor}]",
                   triton_sample._sample_kernel,
                   {"logits_ptr": dtype}, {"SAMPLE": sample, "HAS_ROWS": rows, "HAS_FLOOR": floor,
                                           "BLOCK_R": 4, "BLOCK_V": 2048})
    for dtype, precision in (("fp32", "ieee"), ("bf16", "tf32")):
        for sample in (True, False):
            for split in (False, True):
                yield (f"head_sample_and_score[{dtype} sample={sample} split={split}]", triton_sample._head_kernel,
                       {"h_ptr": dtype, "w_ptr": dtype}, {"SAMPLE": sample, "SPLIT": split, "PRECISION": precision,
                                                          "BLOCK_R": 16, "BLOCK_V": 64, "BLOCK_D": 32})
        for split in (False, True):
            yield (f"expected_embedding[{dtype} split={split}]", triton_embedding._expected_embedding_kernel,
                   {"logits_ptr": dtype, "emb_ptr": dtype},
                   {"SPLIT": split, "PRECISION": precision, "BLOCK_R": 16, "BLOCK_V": 64, "BLOCK_D": 64})
    for sample in (True, False):
        yield (f"head_sample_and_score merge[sample={sample}]", triton_sample._merge_kernel, {},
               {"SAMPLE": sample, "BLOCK_R": triton_sample.MERGE_ROWS})
    yield ("expected_embedding merge", triton_embedding._expected_embedding_merge_kernel, {},
           {"BLOCK_R": 16, "BLOCK_D": 64})
    yield ("energy_score[fp32]", triton_energy._energy_kernel, {"x_ptr": "fp32", "y_ptr": "fp32"},
           {"BLOCK_I": 16, "BLOCK_J": 16, "BLOCK_L": 32})


def compile_variant(kernel, pointers: dict, constexprs: dict, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(kernel.fn).parameters)
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
        else:
            signature[name] = ARGUMENT_TYPES[name]
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (80 = A100, 90 = H100)")
    args = parser.parse_args(argv)
    failures = 0
    for name, kernel, pointers, constexprs in variants():
        started = time.perf_counter()
        try:
            compiled = compile_variant(kernel, pointers, constexprs, args.arch)
        except Exception as err:  # report every variant, then fail
            failures += 1
            print(f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[-1] if str(err) else err}")
            continue
        size = len(compiled.asm.get("cubin", b""))
        print(f"ok   {name}: sm_{args.arch} cubin {size} bytes in {time.perf_counter() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
