"""Packaging for `rlhf`: four-model PPO orchestration on Ray + DeepSpeed.

Version ranges are loose on purpose: real users run on GPUs with their own CUDA builds of torch.
CPU-only machines (CI, laptops) must install `torch==2.13.0` first, as the README says, or pip
resolves a multi-GB CUDA wheel.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="rlhf",
    version="0.1.0",
    description="RLHF orchestration: actor, critic, reward and reference models as Ray actors, "
    "DeepSpeed training, PPO/GRPO/RLOO, Hydra recipes.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rlhf", "rlhf.*"]),
    package_data={"rlhf.tasks": ["data/*.jsonl"]},  # the code task's shipped problems
    install_requires=[
        "torch>=2.2",
        "transformers>=4.56",
        "datasets>=2.18",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "ray[default]>=2.30",
        # Checkpoints resume under ZeRO 0-3 with weights_only loading (rlhf/engine/safe_load.py) on the
        # 0.19 series, measured with 0.19.8 and torch 2.13; older ones load with full pickle or fail
        # under torch >= 2.6's weights_only default.
        "deepspeed>=0.19,<0.20",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "peft>=0.11",
        "wandb>=0.17",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # mistral-common + sentencepiece: Mistral 7B's real tokenizer for the public-vocabulary tests
        # (rlhf/models/public_vocab.py; prepare.tiny_model.tokenizer=mistral).
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "hypothesis>=6.80", "mistral-common>=1.5", "sentencepiece>=0.2"],
        # bench/run.py only: trl 1.12.0 is the last release with the four-model PPOTrainer we compare with.
        "bench": ["trl==1.12.0", "psutil>=5.9"],
        # ppo.rollout.engine=vllm on GPUs. CPU-only machines use vLLM's CPU build instead (README.md,
        # "vLLM rollouts"; .ci/vllm_env.sh).
        "vllm": ["vllm>=0.10", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["rlhf=rlhf.cli:main"]},
)
