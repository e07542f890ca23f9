"""The kit's registries of trainer classes, by name, so that a config can be checked without importing a trainer
library (composing a config loads neither TRL nor the kit's trainers).

Every registry of the kit is one dict literal that lists all of its entries in one place (no decorators, no
registration by importing another module): the SFT objectives (:data:`studykit.objectives.OBJECTIVES`), the
data selectors (:data:`studykit.selectors.SELECTORS`), the RL rewards (:data:`studykit.rewards.REWARDS`), and the two
here, whose entries are trainer classes given by import path and loaded on use (:func:`resolve`, the way Hydra's
``_target_`` names a class).  Adding an RL method or a preference loss is its trainer class plus one line here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.utils import get_class

RL_METHODS: dict[str, str] = {
    "grpo": "studykit.grpo.SharedPromptGRPOTrainer",         # Shao et al., 2024, DeepSeekMath §4.1 (TRL's)
    "hpt": "studykit.hybrid_rl.HPTTrainer",                  # Lv et al., 2025, HPT
    "prefix_rft": "studykit.hybrid_rl.PrefixRFTTrainer",     # Huang et al., 2025, Prefix-RFT
    "dump": "studykit.curriculum.DUMPTrainer",               # Wang et al., 2025, DUMP
}


@dataclass(frozen=True)
class PreferenceLoss:
    """One entry of :data:`PREFERENCE_LOSSES`: the TRL trainer (or kit subclass) and config class that implement the
    loss (import paths), the config values it fixes, and the keyword arguments that go to the trainer rather than
    its config."""
    trainer: str
    config: str = "trl.DPOConfig"
    settings: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)       # trainer keyword arguments the loss fixes
    options: tuple[str, ...] = ()                   # trainer keyword arguments a caller may set


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    # DPO (Rafailov et al., 2023, eq. 7)
    "sigmoid": PreferenceLoss("trl.DPOTrainer", settings={"loss_type": ["sigmoid"]}),
    # length-normalized DPO: each log-ratio divided by its response length (Tülu 3's / delta learning's dpo_norm)
    "sigmoid_norm": PreferenceLoss("trl.DPOTrainer", settings={"loss_type": ["sigmoid_norm"]}),
    # IPO (Azar et al., 2023, eq. 17): the squared distance of the log-ratio margin from 1/(2β)
    "ipo": PreferenceLoss("trl.DPOTrainer", settings={"loss_type": ["ipo"]}),
    # SimPO (Meng et al., 2024, eq. 6): reference-free, length-averaged log-probs, margin γ (simpo_gamma); TRL's
    # CPOTrainer without its NLL term.  It appends the tokenizer's EOS after the chat template's end of turn, so each
    # response is scored with one extra end token.
    "simpo": PreferenceLoss("trl.experimental.cpo.CPOTrainer", "trl.experimental.cpo.CPOConfig",
                            settings={"loss_type": "simpo", "cpo_alpha": 0.0}),
    # SELM's optimistic DPO (studykit.preference.SELMTrainer); pairs need a reference_response column
    "selm": PreferenceLoss("studykit.preference.SELMTrainer", settings={"loss_type": ["sigmoid"]}, options=("alpha",)),
    # Discriminative FT with a reference (DFT) and reference-free (DFT2), studykit.preference.DiscriminativeFTTrainer
    "dft": PreferenceLoss("studykit.preference.DiscriminativeFTTrainer", options=("tau", "gamma")),
    "dft2": PreferenceLoss("studykit.preference.DiscriminativeFTTrainer", fixed={"reference_free": True},
                           options=("tau", "gamma")),
}

# The formats studykit.data reads (its LOADERS) and the judges of eval.judge (studykit.judges.JUDGES, and the
# testbed's verifier), by name, so validating data.source and eval.judge imports neither module; VERIFIABLE_FORMATS:
# the formats whose records carry a gold answer the verifier judges (math: Math-Verify, studykit.answers)
DATA_FORMATS = ("alpaca", "chat", "preferences", "math")
VERIFIABLE_FORMATS = ("math",)
EVAL_JUDGES = ("verifier", "reward_model", "llm_pairwise", "llm_single")
PAIRWISE_JUDGES = ("reward_model", "llm_pairwise")   # those that judge against a reference reply (win)
# peft.method (studykit.trainers.peft_config) and study.nuggets.precision (studykit.nuggets.scoring_precision)
PEFT_METHODS = ("lora", "qlora")
SCORING_PRECISIONS = ("float32", "bfloat16")

# Nuggets' subset rules (studykit.nuggets.select_subsets): every condition of a nuggets study names one
SUBSET_RULES = ("all", "above", "at_most", "top_share", "size_of")


def resolve(path: str) -> type:
    """The class at import path ``path`` (``"trl.DPOTrainer"``)."""
    return get_class(path)
