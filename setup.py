"""Build and install actfocus_kernels (and the reference trainer from python/).

The native extension (csrc/) is added by the native-backends work; without it the package is pure
Python and runs the reference and Triton backends.
"""
from setuptools import find_packages, setup

setup(
    name="actfocus_kernels",
    version="0.1.0",
    description="Fused RL policy-loss kernels with ActFocus token weighting",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["actfocus_kernels", "actfocus_kernels.*"])
    + find_packages("python", include=["actfocus_trainer", "actfocus_trainer.*"]),
    package_dir={"actfocus_trainer": "python/actfocus_trainer"},
    install_requires=["torch>=2.5"],
    extras_require={
        "triton": ["triton>=3.2"],
        "trainer": ["tqdm", "matplotlib"],
        "test": ["pytest", "numpy"],
    },
)
