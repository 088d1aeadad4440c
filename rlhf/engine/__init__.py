"""rlhf.engine — DeepSpeed engines per role (DESIGN.md §5). The only package that imports deepspeed.

- `TrainEngine`: actor / critic; ZeRO 0–3, AdamW, warm-up + constant/cosine LR, checkpoints, HF export.
- `InferenceEngine`: reference / reward; plain eval module (stage 0) or ZeRO-3 shards.
- `init_distributed`: torch.distributed from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT/LOCAL_RANK.
- `build_deepspeed_config`, `lr_factor`: the pure config and schedule math.

deepspeed itself is imported lazily (first engine or init_distributed), so importing this package
is cheap and DS_ACCELERATOR can be settled first.
"""
from rlhf.engine.distributed import init_distributed
from rlhf.engine.ds_config import build_deepspeed_config, lr_factor
from rlhf.engine.inference import InferenceEngine
from rlhf.engine.train import TrainEngine

__all__ = ["InferenceEngine", "TrainEngine", "build_deepspeed_config", "init_distributed", "lr_factor"]
