"""The hybrid layout's host process (rlhf/workers/hybrid.py) in-process: each hosted role is its own
worker object of the same rank, a call reaches exactly the role it names, and nothing else is callable.
Through Ray and the real command: tests/trainers/test_ppo_e2e.py, tests/recipes/test_recipes_cpu.py."""
import pytest

from rlhf.workers.base import BaseWorker
from rlhf.workers.hybrid import HybridWorker


@pytest.fixture(autouse=True)
def rank_env(monkeypatch):
    """BaseWorker sets RANK/WORLD_SIZE/LOCAL_RANK for its process: restored after each test."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(name, "0")


class Echo(BaseWorker):
    def hello(self, value):
        return self.role, self.rank, self.world_size, value

    def _private(self):
        return "secret"


def test_calls_reach_the_named_role_of_the_same_rank():
    host = HybridWorker("hybrid", 1, 2, seed=3, hosted={"actor": Echo, "critic": Echo})
    assert host.hosted_roles() == ["actor", "critic"]
    assert host.call_role("actor", "hello", "x") == ("actor", 1, 2, "x")
    assert host.call_role("critic", "hello", value=5) == ("critic", 1, 2, 5)
    assert host.hosted["actor"] is not host.hosted["critic"]


def test_unknown_roles_and_private_methods_are_refused():
    host = HybridWorker("hybrid", 0, 1, hosted={"actor": Echo})
    with pytest.raises(KeyError, match=r"hybrid rank 0 hosts \['actor'\], not 'reward'"):
        host.call_role("reward", "hello", 1)
    with pytest.raises(AttributeError, match="Echo has no public method '_private'"):
        host.call_role("actor", "_private")
    with pytest.raises(ValueError, match="no roles to host"):
        HybridWorker("hybrid", 0, 1, hosted={})


class FakeEngine:
    """Records release/restore like rlhf/engine's engines (IdleStates)."""

    def __init__(self, log, name):
        from rlhf.engine.idle import IdleStates

        self.log, self.name, self.idle = log, name, IdleStates()

    def release(self, what):
        self.idle.check(what)
        self.idle.released = what
        self.log.append(("release", self.name, what))
        return 100

    def restore(self):
        if self.idle.released is not None:
            self.log.append(("restore", self.name))
            self.idle.released = None


def test_a_call_makes_its_role_active_releasing_the_others_by_their_policy():
    log = []

    class Role(Echo):
        def init_model(self):
            self.engine = FakeEngine(log, self.role)

    host = HybridWorker("hybrid", 0, 1, hosted={"actor": Role, "critic": Role, "reference": Role, "reward": Echo},
                        offload={"actor": "optimizer", "critic": "all", "reference": "all"})
    for role in ("actor", "critic", "reference"):
        host.call_role(role, "init_model")  # a role whose model does not exist yet has nothing to release
    assert log == [("release", "actor", "optimizer"), ("release", "critic", "all")]
    log.clear()
    host.call_role("actor", "hello", 1)  # the generate phase: the reference leaves, the actor returns
    assert log == [("release", "reference", "all"), ("restore", "actor")]  # critic: still released
    log.clear()
    host.call_role("actor", "hello", 2)  # the same role again: nothing moves
    assert log == []
    host.call_role("critic", "hello", 3)
    assert log == [("release", "actor", "optimizer"), ("restore", "critic")]
    log.clear()
    host.call_role("reward", "hello", 4)  # a role without a model (policy none): the active one leaves
    assert log == [("release", "critic", "all")]
    stats = host.phase_switches()
    assert stats["active"] == "reward" and stats["count"] == 6 and stats["offload"]["reward"] == "none"
