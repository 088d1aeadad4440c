"""`TrainEngine`: a trained role (actor, critic) as a DeepSpeed engine with AdamW and an LR schedule.

    engine = TrainEngine(model, EngineConfig(zero_stage=2, lr=1e-6), micro_batch_size=4, grad_accum_steps=2)
    for micro in minibatch.split(4):                       # grad_accum_steps micro-batches per update
        loss = per_token_loss[mask].sum() / global_valid_tokens   # normalised by the GLOBAL count
        engine.backward(loss)
        stats = engine.step()                              # {} until the last micro-batch, then
                                                           # {"grad_norm": ..., "lr": ...}; NaN/inf
                                                           # gradients raise NonFiniteGradError instead

The optimizer is torch's AdamW passed to DeepSpeed as a client optimizer (no DeepSpeed op to
compile); the schedule is a torch LambdaLR passed to DeepSpeed, so its checkpoints include it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from rlhf.config.engine import EngineConfig
from rlhf.engine import export
from rlhf.engine.distributed import barrier, import_deepspeed, init_distributed
from rlhf.engine.ds_config import build_deepspeed_config, lr_lambda, schedule_fields
from rlhf.engine.idle import IdleStates, gradients, move_tensors, optimizer_tensors

class NonFiniteGradError(FloatingPointError):
    """An optimizer update met NaN/inf gradients (on any rank); raised on every rank, the update not applied."""


# DeepSpeed saves into <dir>/<tag>/; a fixed tag keeps one checkpoint per directory.
CHECKPOINT_TAG = "state"


class TrainEngine:
    """DeepSpeed engine (ZeRO 0–3, optional offload) training `model` with AdamW + warm-up/cosine LR.

    Initialises torch.distributed from the environment if needed (see `init_distributed`). Every
    rank of the role constructs it with the same config; `micro_batch_size` is rows per rank per
    forward, `grad_accum_steps` micro-batches per optimizer update.
    """

    def __init__(self, model: torch.nn.Module, cfg: EngineConfig, micro_batch_size: int,
                 grad_accum_steps: int = 1):
        init_distributed()
        deepspeed = import_deepspeed()
        self.cfg = cfg
        self.grad_accum_steps = grad_accum_steps
        world_size = torch.distributed.get_world_size()
        ds_config = build_deepspeed_config(cfg, micro_batch_size, grad_accum_steps, world_size, train=True)
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self._engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                     config=ds_config)
        from rlhf.engine.safe_load import use_weights_only_loading  # imports deepspeed: after import_deepspeed

        use_weights_only_loading(self._engine)  # resume never unpickles arbitrary objects
        self.idle = IdleStates()

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (under ZeRO-3 its parameters are shards; gather to read them)."""
        return self._engine.module

    @property
    def global_steps(self) -> int:
        """Optimizer updates taken so far (restored by load_checkpoint)."""
        return self._engine.global_steps

    def forward(self, *args, **kwargs):
        """Run the model (DeepSpeed gathers ZeRO-3 parameters on the fly)."""
        return self._engine(*args, **kwargs)

    __call__ = forward

    def backward(self, loss: torch.Tensor, last: bool | None = None) -> None:
        """Accumulate d(loss)/d(params), where `loss` is already normalised by GLOBAL counts.

        Contract (STYLE.md item 7): the caller divides each micro-batch's summed loss by the count of
        the whole minibatch on ALL ranks (e.g. valid tokens), so the sum over micro-batches and ranks
        is the full-batch loss. After the last micro-batch, the gradient DeepSpeed hands to the
        optimizer is then exactly the gradient of that full-batch loss.

        DeepSpeed assumes per-micro-batch MEAN losses instead: it divides the loss by
        gradient_accumulation_steps and averages (divides by dp world size) the all-reduced
        gradients. We undo both: `scale_wrt_gas=False` skips the first, multiplying the loss by the
        data-parallel world size cancels the second. Consequently splitting a batch over more ranks
        or micro-batches does not change the update (tests/engine prove it for ZeRO 0, 2 and 3).

        `last`: whether this micro-batch ends the update (then `step` applies it), instead of DeepSpeed's
        count of grad_accum_steps, so an update may have any number of micro-batches (packed to a token
        budget). An engine given `last` once must be given it on every backward after that: DeepSpeed's
        own count no longer lines up.
        """
        if last is not None:
            self._engine.set_gradient_accumulation_boundary(bool(last))
        self._engine.backward(loss * self._engine.dp_world_size, scale_wrt_gas=False)

    def step(self) -> dict[str, float]:
        """Call after every backward. Updates only at the accumulation boundary (every
        grad_accum_steps-th call) and then returns {"grad_norm": pre-clip global gradient 2-norm,
        "lr": the lr this update used}; returns {} on the other calls."""
        if not self._engine.is_gradient_accumulation_boundary():
            self._engine.step()
            return {}
        lr = float(self._engine.optimizer.param_groups[0]["lr"])
        update = self.global_steps + 1
        # Without ZeRO (fp32, stage 0) DeepSpeed clips but does not keep the norm, and applies NaN
        # gradients as they are: compute the norm here, before clipping (gradients are already
        # all-reduced at the boundary backward, so every rank sees the same norm and raises together).
        manual_norm = None if self._engine.zero_optimization() else _grad_norm(self.module)
        if manual_norm is not None and not math.isfinite(manual_norm):
            raise NonFiniteGradError(f"non-finite gradient norm ({manual_norm}) at optimizer update {update}; "
                                     f"the update was not applied")
        skipped_before = self._engine.skipped_steps
        self._engine.step()
        norm = self._engine.get_global_grad_norm()
        norm = manual_norm if norm is None else float(norm)
        # ZeRO 1-3 check for inf/NaN gradients themselves (a flag all-reduced over ranks) and skip
        # the optimizer step: the weights are intact, but the run must not go on as if it trained.
        if self._engine.skipped_steps != skipped_before or (norm is not None and not math.isfinite(norm)):
            raise NonFiniteGradError(f"non-finite gradients at optimizer update {update} (norm {norm}); "
                                     f"DeepSpeed skipped the update")
        return {"grad_norm": norm if norm is not None else float("nan"), "lr": lr}

    def release(self, what: str) -> int:
        """Move the optimizer states, master weights and gradients (what="optimizer") and the weights too
        ("all") to host memory while another role of this process runs; returns the bytes moved
        (rlhf/engine/idle.py). `restore()` before the next forward."""
        self.idle.check(what)
        stage = self._engine.zero_optimization_stage()
        if stage == 3:
            raise ValueError("release: ZeRO-3 states are offloaded by DeepSpeed only with its FusedAdam; use "
                             "engines.<role>.offload_optimizer / offload_params")
        self.idle.device = next(self.module.parameters()).device
        host = torch.device("cpu")
        if stage in (1, 2):
            from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

            include = None if what == "all" else [OffloadStateTypeEnum.optim_states, OffloadStateTypeEnum.hp_params,
                                                  OffloadStateTypeEnum.lp_grads]
            self._engine.offload_states(include=include, device=OffloadDeviceEnum.cpu,
                                        pin_memory=self.idle.device.type == "cuda")
            moved = -1  # DeepSpeed does not report it
        else:
            moved = move_tensors(optimizer_tensors(self._engine.optimizer) + gradients(self.module), host)
            if what == "all":
                moved += move_tensors(self.module.parameters(), host)
        self.idle.released = what
        return moved

    def restore(self) -> None:
        """Bring back what `release` moved (a no-op when nothing is released)."""
        if self.idle.released is None:
            return
        if self._engine.zero_optimization_stage() in (1, 2):
            self._engine.reload_states()
        else:
            device = self.idle.device
            move_tensors(list(self.module.parameters()) + optimizer_tensors(self._engine.optimizer)
                         + gradients(self.module), device)
        self.idle.released = None

    def train(self) -> "TrainEngine":
        self._engine.train()
        return self

    def eval(self) -> "TrainEngine":
        self._engine.eval()
        return self

    def save_checkpoint(self, ckpt_dir: str | Path) -> None:
        """Save the full training state (weights, optimizer incl. ZeRO shards, LR scheduler, step
        counters) under `ckpt_dir` — nothing is written outside it, so the caller can write to a temp
        directory and rename it. Collective: every rank writes its shards; all ranks return after all
        have finished (safe to rename right after)."""
        self._engine.save_checkpoint(str(ckpt_dir), tag=CHECKPOINT_TAG,
                                     client_state={"lr_schedule": schedule_fields(self.cfg)})
        barrier()

    def load_checkpoint(self, ckpt_dir: str | Path) -> None:
        """Restore what `save_checkpoint` wrote (same world size and ZeRO stage). Collective.

        Raises FileNotFoundError if `ckpt_dir` holds no checkpoint, and ValueError if it was saved
        under a different LR schedule (lr, lr_schedule, warmup_steps, total_steps, min_lr_ratio): the
        optimizer's restored lr and the config's schedule would otherwise silently disagree."""
        if not (Path(ckpt_dir) / CHECKPOINT_TAG).is_dir():
            raise FileNotFoundError(f"no engine checkpoint in {ckpt_dir} (expected {CHECKPOINT_TAG}/ inside)")
        path, client_state = self._engine.load_checkpoint(str(ckpt_dir), tag=CHECKPOINT_TAG,
                                                          load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load the checkpoint in {ckpt_dir}")
        saved, current = (client_state or {}).get("lr_schedule"), schedule_fields(self.cfg)
        if saved is not None and saved != current:
            changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
            raise ValueError(f"checkpoint {ckpt_dir} was saved under another LR schedule; "
                             f"(checkpoint, this EngineConfig) = {changed}. Resume with the same schedule fields.")

    def export_hf(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Write an HF directory (safetensors + config + tokenizer) loadable with `from_pretrained`.
        Collective under ZeRO-3 (gathers shards): call on every rank; rank 0 writes."""
        return export.export_hf(self.module, out_dir, zero3=self._engine.zero_optimization_stage() == 3,
                                tokenizer=tokenizer)


def _grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
