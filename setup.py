"""Install the ``cxrfx`` package (Foundation X for MONAI) from ``plugins/cxrfx``."""

from setuptools import find_packages, setup

setup(
    name="cxrfx",
    version="0.1.0",
    description="Foundation X for MONAI: chest X-ray multi-task pretraining and fine-tuning bundles",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "plugins"},
    packages=find_packages("plugins"),
    package_data={"cxrfx": ["data/*.json"]},
    install_requires=[
        "monai>=1.6,<1.7",
        "torch>=2.8",
        "pytorch-ignite>=0.5",
        "nibabel>=5",
        "pydicom>=2.4",
        "highdicom>=0.23",  # DICOM SEG output of `predict` (brings pydicom>=3.0.1)
        "fire>=0.6",
        "numpy>=1.24",
        "einops>=0.7",
        "pyyaml>=6",
        "jsonschema>=4",
        "pillow>=10",
        "scipy>=1.10",
        "tensorboard>=2.14",
        "tqdm>=4.60",
    ],
    extras_require={
        # itk is optional: ~1.5 GB installed; only needed for NRRD and exotic ITK formats.
        "itk": ["itk>=5.3"],
        # ONNX export (torch.export based) and ONNX Runtime for its numerical check.
        "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        "test": ["pytest>=8", "pytest-timeout",  # a hung test fails (pytest.ini) instead of stalling CI
                 "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18", "scikit-learn", "pycocotools",
                 # the Model Zoo's code-format tools (the packager formats the vendored code with black / isort),
                 # its pre-commit hooks and its unit tests' parameterized (make zoo-check, tests/test_zoo_*.py)
                 "black", "isort", "flake8", "flake8-bugbear", "flake8-comprehensions", "flake8-executable",
                 "pep8-naming", "pre-commit-hooks", "parameterized"],
    },
    entry_points={"console_scripts": ["cxrfx=cxrfx.__main__:main"]},
)
