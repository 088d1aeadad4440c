"""rlhf: four-model RLHF (PPO, GRPO, RLOO, REINFORCE++) on Ray worker groups and DeepSpeed engines.

Layers (each imports only the ones listed before it; `tests/test_layering.py` enforces it):
algorithms → config → data → tasks → models → engine → workers → distributed → trainers → cli.
Importing `rlhf` itself is cheap: no torch, Ray or DeepSpeed until a subpackage is used.
"""

__version__ = "0.1.0"
