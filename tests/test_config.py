import pytest

from studykit.config import ConfigError, compose, list_studies


def test_default_is_embedded_quickstart_on_the_real_model():
    cfg = compose()
    assert (cfg.profile.name, cfg.study.name, cfg.model.source) == ("embedded", "quickstart", "pypi_gguf")


def test_profiles_resize_and_command_line_wins():
    smoke = compose(["profile=smoke"])
    assert smoke.model.source == "tiny_random" and smoke.train.max_steps == 2
    assert compose(["profile=smoke", "model=smollm2_135m"]).model.source == "pypi_gguf"
    assert compose(["profile=gpu"]).model.path == "Qwen/Qwen2.5-0.5B"
    assert compose(["train.learning_rate=3e-5"]).train.learning_rate == 3e-5
    gemma = compose(["study=nuggets", "profile=embedded_gemma"])   # the embedded sizes, the base model, own results
    assert (gemma.model.source, gemma.profile.name, gemma.data.pool_per_family) == ("pypi_gguf_parts", "embedded_gemma", 250)
    assert compose(["study=nuggets_sensitivity", "profile=gpu"]).study.nuggets.anchors.n == 100   # the paper's anchor count


def test_composed_config_is_read_only():
    cfg = compose()
    with pytest.raises(Exception):
        cfg.seed = 5


@pytest.mark.parametrize("overrides, message", [
    (["study=nope"], "unknown study 'nope'.*available: .*quickstart"),
    (["profile=huge"], "unknown profile 'huge'.*available: embedded, embedded_gemma, .*gpu_check, .*paper_nuggets, .*smoke"),
    (["train.not_a_field=1"], "Could not override 'train.not_a_field'"),
    (["seed=abc"], "seed=.abc. is not allowed: expected an integer"),
    (["novalue"], "Error parsing override 'novalue'"),
])
def test_bad_overrides_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_every_study_has_a_notebook():
    from studykit.config import NOTEBOOK_DIR

    for study in list_studies():
        assert (NOTEBOOK_DIR / compose([f"study={study}"]).study.notebook).is_file()


@pytest.mark.parametrize("overrides, key, allowed", [
    (["data.noise.fraction=1.5"], "data.noise.fraction", r"a fraction in \[0, 1\]"),
    (["data.noise.fraction=-0.1"], "data.noise.fraction", r"a fraction in \[0, 1\]"),
    (["data.pool_per_family=0"], "data.pool_per_family", "an integer ≥ 1"),
    (["data.eval_per_family=2.5"], "data.eval_per_family", "an integer ≥ 1"),
    (["data.preference_per_family=-1"], "data.preference_per_family", "an integer ≥ 0"),
    (["eval.batch_size=0"], "eval.batch_size", "an integer ≥ 1"),
    (["eval.max_new_tokens=-4"], "eval.max_new_tokens", "an integer ≥ 1"),
    (["train.learning_rate=-1e-4"], "train.learning_rate", "a number > 0"),
    (["train.learning_rate=0"], "train.learning_rate", "a number > 0"),
    (["dpo.learning_rate=-5e-7"], "dpo.learning_rate", "a number > 0"),
    (["dpo.beta=0"], "dpo.beta", "a number > 0"),
    (["train.max_steps=0"], "train.max_steps", "-1 .use epochs. or an integer ≥ 1"),
    (["train.per_device_train_batch_size=0"], "train.per_device_train_batch_size", "an integer ≥ 1"),
    (["train.num_train_epochs=0"], "train.num_train_epochs", "a number > 0"),
    (["profile.seeds=[]"], "profile.seeds", "a non-empty list of integers"),
    (["profile.anchors=0"], "profile.anchors", "an integer ≥ 1"),
    (["+data.families.not_a_task={}"], "data.families", "reasoning-gym task names"),
    (["data.noise.kinds=[wrong_answer,typo]"], "data.noise.kinds", "subset of wrong_answer"),
    (["study=nuggets", "study.headline_threshold=1.5"], "study.headline_threshold", r"threshold in \[0, 1\]"),
    (["study=nuggets", "study.low_threshold=-0.5"], "study.low_threshold", r"threshold in \[0, 1\]"),
    (["study=nuggets", "study.nuggets.anchors.n=0"], "study.nuggets.anchors.n", "an integer ≥ 1"),
    (["study=nuggets", "study.nuggets.mode=fast"], "study.nuggets.mode", "faithful or clean"),
    (["study=nuggets", "study.conditions.top_25.value=0"], "study.conditions", r"top_share a share in \(0, 1\]"),
    (["study=nuggets", "study.conditions.top_25.rule=best"], "study.conditions", "rule: all|above|at_most"),
    (["study=nuggets", "study.conditions.random_same_size.value=nowhere"], "study.conditions", "an earlier condition"),
    (["study=nuggets", "study.conditions.random_25.score=oracle"], "study.conditions", "score: golden|random"),
    (["study=nuggets", "study.thresholds=[0.5,1.2]"], "study.thresholds", r"thresholds in \[0, 1\]"),
    (["study=nuggets", "study.nuggets.anchors.method=greedy"], "study.nuggets.anchors.method", "kmeans or random"),
    (["study=rewardrank", "study.checkpoints=1"], "study.checkpoints", "null or an integer ≥ 2"),
    (["study=rewardrank", "study.sft_data.validation=1.0"], "study.sft_data.validation", r"a fraction in \(0, 1\)"),
    (["study=rewardrank", "study.preference_data.metric_pairs=0"], "study.preference_data.metric_pairs",
     r"a fraction in \(0, 1\)"),
    (["study=sft_objectives", "study.objectives.sft.objective=magic"], "study.objectives", "a registered objective"),
    (["study=sft_objectives", "study.transforms=[grape,swap]"], "study.transforms", "a subset of grape, ssr, s3ft"),
    (["study=sft_objectives", "study.in_domain=[chain_sum,nonsense]"], "study.in_domain", "a proper subset"),
    (["study=rl_hybrids", "study.sft_steps=24"], "study.sft_steps", "from 1 to study.steps − 1 = 23"),
    (["study=rl_hybrids", "study.steps=1"], "study.steps", "an integer ≥ 2"),
    (["study=rl_forgetting", "study.second_task=calendar_arithmetic"], "study.first_task", "two different families"),
    (["study=rl_forgetting", "study.first_task=figlet"], "study.first_task", "two different families"),
    (["study=rl_forgetting", "study.control_steps=0"], "study.control_steps", "an integer ≥ 1"),
    (["study=diversity", "study.samples=1"], "study.samples", "an integer ≥ 2"),
    (["study=diversity", "study.open_ended=80"], "study.open_ended", "from 1 to 40"),
    (["study=diversity", "study.learning_rates=[0.0]"], "study.learning_rates", "learning rates"),
    (["study=merging", "study.ingredient_lrs=[1e-4,1e-4]"], "study.ingredient_lrs", "two distinct learning rates"),
    (["study=merging", "train.learning_rate=2e-4"], "train.learning_rate", "one of study.ingredient_lrs"),
    (["study=merging", "study.dtm_portions=1"], "study.dtm_portions", "an integer ≥ 2"),
    (["study=merging", "study.slr.alphabet_size=30"], "study.slr.alphabet_size", "from 2 to 26"),
    (["study=preference_losses", "study.losses.dpo.loss=kto"], "study.losses", "studykit.registry.PREFERENCE_LOSSES"),
    (["study=preference_losses", "study.heldout_pairs_per_family=24"], "study.heldout_pairs_per_family",
     "fewer than data.preference_per_family=24"),
    (["study=delta_learning", "study.delta.loss=orpo"], "study.delta.loss", "studykit.registry.PREFERENCE_LOSSES"),
    (["study=self_contrast", "study.self_contrast.negatives=[0,4]"], "study.self_contrast.negatives",
     "integers ≥ 1"),
    (["study=preference_variants", "study.selm_alphas=[0.1,-1]"], "study.selm_alphas", "distinct numbers > 0"),
    (["study=preference_losses", "data.dev_per_family=0"], "data.dev_per_family", "≥ 1 with study.learning_rates"),
    (["study=self_contrast", "study.tuning_seed=2"], "study.tuning_seed", r"not in study.seeds=\[0, 1, 2, 3, 4\]"),
    (["study=preference_variants", "study.tuning_seed=1.5"], "study.tuning_seed", "an integer ≥ 0"),
    (["study=delta_learning", "study.delta.keep=some"], "study.delta.keep", "bare_answers, different or all"),
    (["study=budget", "study.min_families=0"], "study.min_families", "an integer ≥ 1"),
    (["study=prob_objectives", "study.model_strong=[word_sequence_reversal]"], "study.model_strong",
     "≥ 2 distinct families"),
    (["study=prob_objectives", "study.model_weak=[figlet_font,gsm8k]"], "study.model_weak",
     "families of data.families"),
    (["study=prob_objectives", "study.model_weak=[figlet_font,word_sequence_reversal]"], "study.model_weak",
     "disjoint from study.model_strong"),
    (["study=prob_objectives", "study.objectives.p.objective=focal"], "study.objectives", "a registered objective"),
])
def test_bad_values_are_one_clear_error_naming_key_value_and_what_is_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: expected .*{allowed}"):
        compose(overrides)


@pytest.mark.parametrize("study", list_studies())
def test_every_study_draws_its_testbed_at_the_sizes_it_runs_with(study):
    """Each family's splits are drawn answer-balanced, which not every size allows (a family's answers can be too
    skewed); the smoke profile draws other sizes, so only this test sees a study's own sizes before its run does."""
    from studykit.testbed import build_testbed

    cfg = compose([f"study={study}"])
    splits = build_testbed(cfg.data)
    for split in ("pool", "eval"):
        assert len(splits[split]) == len(cfg.data.families) * cfg.data[f"{split}_per_family"]


def test_an_unknown_study_key_is_refused_naming_the_file_and_the_key():
    with pytest.raises(ConfigError, match=r"^study\.foo=1 is not a key of study quickstart \(conf/study/quickstart\.yaml"):
        compose(["+study.foo=1"])
    with pytest.raises(ConfigError, match=r"^study\.nuggets\.anchors\.k=3 is not a key of study nuggets "
                                          r"\(conf/study/nuggets\.yaml schema: .*nuggets\.anchors\.n"):
        compose(["study=nuggets", "+study.nuggets.anchors.k=3"])


def test_a_schema_naming_no_check_is_refused():
    with pytest.raises(ConfigError, match=r"^study\.schema\.seeds='bogus' in conf/study/nuggets\.yaml .*CHECKS"):
        compose(["study=nuggets", "study.schema.seeds=bogus"])


@pytest.mark.parametrize("study", list_studies())
def test_every_study_declares_its_schema_smoke_and_outputs(study):
    from studykit.validate import CHECKS

    own = compose([f"study={study}"]).study
    assert set(own.schema.values()) <= set(CHECKS), f"conf/study/{study}.yaml schema names checks not in CHECKS"
    assert all(isinstance(x, str) for x in [*own.smoke, *own.outputs])
    assert len(own.outputs) > 0


@pytest.mark.parametrize("study", list_studies())
def test_every_study_composes_with_its_smoke_overrides(study):
    own = compose([f"study={study}"]).study   # composing validates every key against the schema
    assert compose([f"study={study}", "profile=smoke", *own.smoke]).study.name == study


@pytest.mark.parametrize("overrides, key, allowed", [
    (["study=self_contrast", "study.samples=1"], "study.samples", "an integer ≥ 2"),
    (["study=rewardrank", "study.self_sampled.samples=1"], "study.self_sampled.samples", "0 .none. or an integer ≥ 2"),
    (["study=rl_post_training", "study.grpo_steps=0"], "study.grpo_steps", "an integer ≥ 1"),
    (["study=rl_post_training", "study.learning_rates=[1e-5]"], "study.learning_rates",
     "null .nothing chosen on dev. or a list of at least two distinct learning rates"),
    (["study=rl_post_training", "study.learning_rates=null"], "study.learning_rates",
     "a list of at least two learning rates for notebooks/rl_post_training.ipynb"),
    (["study=rl_post_training", "study.tuning_seed=0"], "study.tuning_seed",
     r"an integer not in study.seeds=\[0, 1, 2, 3, 4\]"),
])
def test_a_schema_check_catches_a_bad_value(overrides, key, allowed):
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed: expected {allowed}"):
        compose(overrides)
