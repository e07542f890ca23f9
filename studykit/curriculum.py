"""DUMP (Wang et al., 2025, "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM
Post-training", arXiv 2504.09710; official ``verl/utils/curriculum_learning.py``): a UCB bandit over task
distributions ("arms") that samples the arms whose rollouts currently carry the most learning signal.

Per trajectory, ``a`` is its mean GRPO advantage over response tokens; per arm j, ``μ_j`` is the mean ``|a|``
over the arm's last ``window`` trajectories (0 before its first), ``n_j`` the trajectories it has had and
``N = Σ n_j``.  Each batch draws every prompt's arm from ``p = softmax(score / temperature)`` with
``score_j = μ_j + √(2 ln(N + 1) / (n_j + 1))``, then an item of that arm uniformly.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from accelerate.utils import gather_object
from scipy.special import softmax
from torch.utils.data import Sampler

from .grpo import SharedPromptGRPOTrainer


class UCBCurriculum:
    """The bandit's statistics per arm and its sampling distribution (DUMP, Algorithm 1)."""

    def __init__(self, arms: list[str], window: int = 300, temperature: float = 0.1):
        if not arms or window < 1 or temperature <= 0:
            raise ValueError(f"curriculum: need arms, window ≥ 1 and temperature > 0; got {arms}, {window}, "
                             f"{temperature}")
        self.arms = list(dict.fromkeys(arms))
        self.temperature = temperature
        self.recent = {arm: deque(maxlen=window) for arm in self.arms}
        self.seen = {arm: 0 for arm in self.arms}

    def update(self, arms: list[str], advantages) -> None:
        """Record one |advantage| per trajectory of ``arms``."""
        for arm, advantage in zip(arms, np.abs(np.asarray(advantages, dtype=float)), strict=True):
            self.recent[arm].append(float(advantage))
            self.seen[arm] += 1

    def terms(self) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: μ, the mean |advantage| over its window, and the exploration bonus √(2 ln(Σn + 1) / (n + 1))."""
        total = sum(self.seen.values())
        mean = np.array([np.mean(self.recent[a]) if self.recent[a] else 0.0 for a in self.arms])
        counts = np.array([self.seen[a] for a in self.arms], dtype=float)
        return mean, np.sqrt(2.0 * np.log(total + 1.0) / (counts + 1.0))

    def scores(self) -> np.ndarray:
        mean, bonus = self.terms()
        return mean + bonus

    def probabilities(self) -> np.ndarray:
        return softmax(self.scores() / self.temperature)


class CurriculumSampler(Sampler):
    """TRL's ``RepeatSampler`` layout with the prompts drawn by a :class:`UCBCurriculum`: blocks of
    ``batch_size`` prompts, each prompt repeated ``mini_repeat_count`` (G) times in a row, each block
    ``repeat_count`` times; the arm probabilities are read anew for every block."""

    def __init__(self, arm_of_item: list[str], curriculum: UCBCurriculum, *, mini_repeat_count: int,
                 batch_size: int, repeat_count: int, seed: int):
        self.by_arm = {arm: [i for i, a in enumerate(arm_of_item) if a == arm] for arm in curriculum.arms}
        empty = [arm for arm, items in self.by_arm.items() if not items]
        if empty:
            raise ValueError(f"curriculum arms without items: {empty}")
        self.curriculum, self.n_items = curriculum, len(arm_of_item)
        self.mini_repeat_count, self.batch_size, self.repeat_count = mini_repeat_count, batch_size, repeat_count
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        for _ in range(self.n_items // self.batch_size):
            arms = self.rng.choice(len(self.curriculum.arms), size=self.batch_size, p=self.curriculum.probabilities())
            block = [int(self.rng.choice(self.by_arm[self.curriculum.arms[a]])) for a in arms]
            for _ in range(self.repeat_count):
                for index in block:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return (self.n_items // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count


class DUMPTrainer(SharedPromptGRPOTrainer):
    """GRPO whose prompts come from DUMP's UCB curriculum over the ``arm`` column (the testbed family, e.g.
    ``knights_knaves:3``).  ``history`` holds, per generation batch, the step and each arm's probability,
    ``μ``, exploration bonus and ``n`` (so a run shows whether μ or the bonus drove its draws).  The data loader draws one batch ahead, so a draw uses the statistics up to the batch
    before the one being trained."""

    def __init__(self, *args, window: int = 300, temperature: float = 0.1, **kwargs):
        self._curriculum_settings = {"window": window, "temperature": temperature}
        self.history: list[dict] = []
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None):
        dataset = dataset if dataset is not None else self.train_dataset
        arms = list(dataset["arm"])
        self.curriculum = UCBCurriculum(sorted(set(arms)), **self._curriculum_settings)
        return CurriculumSampler(arms, self.curriculum, mini_repeat_count=self.num_generations,
                                 batch_size=self.args.generation_batch_size // self.num_generations,
                                 repeat_count=self.num_iterations * self.args.steps_per_generation,
                                 seed=self.args.seed)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            arms = gather_object([x["arm"] for x in inputs])
            advantages = self.accelerator.gather(output["advantages"]).cpu().numpy()
            self.curriculum.update(arms, advantages)
            p, (mu, bonus), arms = self.curriculum.probabilities(), self.curriculum.terms(), self.curriculum.arms
            self.history.append({"step": self.state.global_step, **{f"p[{a}]": float(q) for a, q in zip(arms, p)},
                                 **{f"mu[{a}]": float(m) for a, m in zip(arms, mu)},
                                 **{f"bonus[{a}]": float(b) for a, b in zip(arms, bonus)},
                                 **{f"n[{a}]": self.curriculum.seen[a] for a in arms}})
        return output
