"""SFT and reward-model training end to end on Ray + DeepSpeed (CPU), plus the RM evaluation math."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ppo_fixtures import TASK_KWARGS, TINY  # noqa: E402

from rlhf.config.engine import EngineConfig  # noqa: E402
from rlhf.config.model import ModelConfig  # noqa: E402
from rlhf.config.placement import RolePlacement  # noqa: E402
from rlhf.config.supervised import RMConfig, SFTConfig, SupervisedDataConfig, SupervisedTrainerConfig  # noqa: E402
from rlhf.models.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from rlhf.tasks import get_task  # noqa: E402
from rlhf.trainers.rm_eval import expected_calibration_error, reward_model_report  # noqa: E402
from rlhf.trainers.supervised import run_rm, run_sft  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("supervised")
    build_tiny_tokenizer(root / "tok")
    written = get_task("arithmetic", **TASK_KWARGS).write_files(root / "data")
    return {"lm": str(build_tiny_model(root / "lm", root / "tok", seed=0, **TINY)),
            **{k: str(v) for k, v in written.items()}}


def trainer(**kw):
    base = dict(total_steps=6, batch_size=8, micro_batch_size=4, eval_every=3, save_every=3, progress=False,
                tensorboard=False)
    return SupervisedTrainerConfig(**{**base, **kw})


def test_sft_lowers_the_response_loss_and_exports_a_causal_lm(ray_cluster, files, tmp_path):
    cfg = SFTConfig(model=ModelConfig(path=files["lm"]), use_gpu=False,
                    data=SupervisedDataConfig(train=files["sft"], eval=files["sft"], max_eval_rows=16, max_len=24),
                    engine=EngineConfig(lr=3e-3), placement=RolePlacement(cpus_per_rank=0.5), trainer=trainer())
    summary = run_sft(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert summary["eval_loss"] == pytest.approx(evals[-1])
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "final")
    assert json.loads((tmp_path / "summary.json").read_text())["sft"]["steps"] == 6


def test_reward_model_trains_reports_and_resumes(ray_cluster, files, tmp_path):
    def config(total):
        return RMConfig(model=ModelConfig(path=files["lm"]), use_gpu=False,
                        data=SupervisedDataConfig(train=files["preferences_train"], eval=files["preferences_eval"],
                                                  max_len=24),
                        engine=EngineConfig(lr=3e-3), placement=RolePlacement(cpus_per_rank=0.5),
                        trainer=trainer(total_steps=total))
    summary = run_rm(config(3), tmp_path)
    for key in ("eval_accuracy", "margin_mean", "ece", "score_mean", "score_std", "accuracy/forgot_carry"):
        assert key in summary, key
    stored = json.loads((tmp_path / "summary.json").read_text())["rm"]
    assert stored["eval_accuracy"] == summary["eval_accuracy"]
    # The exported reward model is a standard sequence classifier with a trained head.
    from rlhf.models import load_reward_model
    load_reward_model(tmp_path / "rm" / "final")
    # Resuming with more steps continues from step 3 (data position and optimizer restored).
    summary = run_rm(config(6), tmp_path, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] and summary["steps"] == 6


def test_reward_model_report_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0, 5.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    report = reward_model_report(chosen, rejected, ["a", "b", "a", "b"])
    assert report["accuracy"] == 0.5  # a tie is not a win
    assert report["accuracy/a"] == 0.5 and report["accuracy/b"] == 0.5
    assert report["margin_mean"] == pytest.approx((1 - 1 + 0 + 5) / 4)
    assert report["score_mean"] == pytest.approx(11 / 8)


def test_ece_is_zero_when_calibrated_and_one_when_confidently_wrong():
    assert expected_calibration_error(torch.zeros(10)) == pytest.approx(0.0)
    assert expected_calibration_error(torch.full((10,), 30.0)) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(torch.full((10,), -30.0)) == pytest.approx(1.0, abs=1e-9)
    # σ(1.0986) = 0.75: right 3 times in 4 would be calibrated; right every time is under-confident by 0.25.
    assert expected_calibration_error(torch.full((8,), 1.0986123)) == pytest.approx(0.25, abs=1e-6)


class NaNAtStep2Group:
    """A stand-in for the SFT worker group whose second update meets a NaN gradient."""

    def __init__(self):
        self.steps = 0

    def call(self, method, *args):
        from rlhf.distributed.worker_group import WorkerError
        from rlhf.engine.train import NonFiniteGradError

        if method == "train_step":
            self.steps += 1
            if self.steps == 2:
                cause = NonFiniteGradError("non-finite gradient norm (nan) at optimizer update 2; the update was not applied")
                error = WorkerError("sft", 0, "train_step", f"raised {cause!r}")
                error.__cause__ = cause
                raise error
            return {"loss": 1.0}
        if method == "save_checkpoint":
            Path(args[0]).mkdir(parents=True)
            return None
        raise AssertionError(f"unexpected call {method}")


def test_sft_stops_on_a_non_finite_gradient_naming_the_last_good_checkpoint(tmp_path):
    from rlhf.trainers.non_finite import NonFiniteRunError
    from rlhf.trainers.supervised import SFTTrainer

    cfg = SFTConfig(model=ModelConfig(path="unused"), use_gpu=False, data=SupervisedDataConfig(train="unused"),
                    trainer=trainer(total_steps=3, batch_size=2, save_every=1, eval_every=0))
    sft = SFTTrainer(cfg, NaNAtStep2Group(), train_set=list(range(8)), eval_set=[], run_dir=tmp_path)
    with pytest.raises(NonFiniteRunError, match=r"(?s)sft: worker 'sft' rank 0.*update 2.*last good checkpoint is "
                                                r".*step_00000001"):
        sft.fit()
