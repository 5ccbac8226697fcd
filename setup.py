"""edgevlm packaging.

The base install is the runtime only (no torch). `export`/`train` add the PyTorch side,
`dev` adds the test tools and oracles. torch is pinned to the CPU build that lies on this
machine class's disk: a bare `torch` requirement would pull a multi-GB CUDA build.
"""

from setuptools import Extension, setup


def kernel(name: str) -> Extension:
    """One of our C kernels (kernels/csrc/NAME.c) as edgevlm.runtime._NAME, which the runtime loads
    with ctypes (no Python API). Optional: without a C compiler the install still succeeds and the
    runtime runs the vision tower on ONNX Runtime. Only the kernel functions are compiled for
    AVX-512 (target attributes), so the library loads on any x86-64 and says whether the CPU can
    run it."""
    return Extension(
        f"edgevlm.runtime._{name}",
        sources=[f"kernels/csrc/{name}.c"],
        depends=["kernels/csrc/workers.h", "kernels/csrc/exp2.h"],
        extra_compile_args=["-O3", "-std=c11", "-D_GNU_SOURCE"],
        extra_link_args=["-lpthread", "-lm"],
        optional=True,
    )


# the bf16 vision attention (attention_kernel.py) and the int8 vision layer (mlp_kernel.py)
KERNELS = [kernel("attention_bf16"), kernel("mlp_int8")]


RUNTIME = [
    "numpy>=1.24",
    "onnxruntime>=1.20",
    "pillow>=10.0",
    "click>=8.1",
    "tokenizers>=0.15",
    "tqdm>=4.60",
]
# jinja2 renders a checkpoint's chat template once, at export time (never in the runtime)
TORCH_SIDE = ["torch==2.13.0", "onnx>=1.16", "onnxscript>=0.2", "safetensors>=0.4", "jinja2>=3.1"]
# transformers is the reference oracle in tests only (never imported by edgevlm itself)
# matplotlib draws `edgevlm bench --plot` charts only; in dev so CI runs the plot test
BENCH = ["matplotlib>=3.7"]
DEV = TORCH_SIDE + BENCH + ["pytest>=7.0", "hypothesis>=6.0", "transformers>=4.50"]

setup(
    name="edgevlm",
    version="0.1.0",
    description="Edge-optimised vision-language model runtime: distil, quantise, export to ONNX, caption on CPU.",
    python_requires=">=3.10",
    packages=[
        "edgevlm",
        "edgevlm.runtime",
        "edgevlm.models",
        "edgevlm.data",
        "edgevlm.train",
        "edgevlm.eval",
        "edgevlm.export",
        "edgevlm.kernels",
        "edgevlm.benchmarks",
    ],
    package_dir={
        "edgevlm.export": "export",
        "edgevlm.kernels": "kernels",
        "edgevlm.benchmarks": "benchmarks",
    },
    package_data={"edgevlm": ["assets/default/*", "assets/samples/*"]},
    ext_modules=KERNELS,
    install_requires=RUNTIME,
    extras_require={"export": TORCH_SIDE, "train": TORCH_SIDE, "bench": BENCH, "dev": DEV},
    entry_points={"console_scripts": ["edgevlm=edgevlm.cli:main"]},
)
