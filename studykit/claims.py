"""Paper claims → guarded verdicts: one function turns the claims YAML of a study and its per-item predictions into
the claims table every notebook shows and ``studykit analyze`` recomputes from committed evidence.

A claims file (``conf/claims/<study>.yaml``) is a mapping: ``claims:``, the list of entries, and an optional
``interpretation:``, a short hand-written paragraph on what the committed result does and does not show (the
result's page, :mod:`studykit.analysis`, prints it).  A bare list of entries is a claims file without one.  An
entry::

    - id: dft.beats_sft_in_domain
      paper: wu2025dft                  # a key of references.bib
      source: Table 1, Qwen2.5-Math-1.5B, math average
      claim: DFT beats SFT on the trained domain
      paper_numbers: {treatment: 31.58, control: 18.01}
      kind: paper                       # paper: the paper reports it; kit: the kit's own question (never "contradicts")
      regime: {model: Qwen2.5-Math-1.5B, data: NuminaMath 100k, steps: 1 epoch}   # the paper's (paper claims)
      requires: {signal_share: 0.5, changed_replies: 0.1}   # optional preconditions on the trained arms (also
                                        # quality_gain: the lower 95% bound of the arm's paired quality gain over
                                        # its start, e.g. 0.0: an RL-from-start arm must first have learned)
      headline: true                    # optional: the study's main question: a verdict needs ≥ 5 training seeds
      paper_effect: 0.05                # optional: the paper's effect on this comparison's scale (a difference in
                                        # the test's metric); a comparison whose MDE exceeds it and that does not
                                        # resolve reads "not testable at this scale (paper effect x vs MDE y)"
      test: {treatment: dft, control: sft, metric: lenient, direction: greater, families: in_domain}

An optional ``inert_arm: {arm, witness}`` names the arm a claim's paper expects *not* to learn — it must be the arm
the test says is lower (prob_objectives: −p on families the model's prior does not cover, where NLL wins) — and a
*witness*, the same method trained where it is expected to act (−p on the model-strong families).  The inert arm's
placebo comparison is shown, not required; the witness must beat its own placebo (so a broken method cannot pass
for an inert one), and the other arm must still beat its placebo.

``test.families`` names a family group of the study's evidence (``in_domain``, ``ood``; ``all`` by default).
``test.metric`` is a per-item column of the predictions: ``strict`` / ``lenient`` correctness, a per-prompt
measurement of :data:`PER_PROMPT`, a teacher-forced score of the gold answer (:data:`TEACHER_FORCED`), or a
judge's column of :data:`JUDGED` (:mod:`studykit.judges`: ``win`` against
reference replies, ``mt_bench_score``); ``score`` is whichever per-item score the evaluation gave (``eval.judge``:
lenient accuracy from the verifier, a judge's column otherwise), for a claim a study tests at any scale.  ``metric: auroc`` tests a scorer instead of a trained model
(:func:`auroc_claims_table`).  An entry with ``not_tested: <why>`` instead of ``test`` is listed with that reason.
The guards are :mod:`studykit.guards`; the interval, p-values and Holm are :mod:`studykit.stats`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import CONF_DIR, ROOT
from .errors import ClaimsError
from . import guards
from .guards import UNTRAINED
from .stats import ALPHA, DIRECTIONS, auroc_difference, holm, paired_difference, verdict

CLAIMS_DIR = CONF_DIR / "claims"
BIBLIOGRAPHY = ROOT / "references.bib"
ACCURACY = ("strict", "lenient")
PER_PROMPT = ("ead", "ead_unigram", "embedding_diversity", "vendi", "quality", "crc_valid", "crc_distinct",
              "crc_distinct_valid")
TEACHER_FORCED = ("gold_token_accuracy", "gold_logprob")   # per item, the gold answer teacher-forced
                                                            # (studykit.evaluate.gold_token_scores)
TEACHER_FORCED_LABELS = {"gold_token_accuracy": "gold token accuracy (teacher-forced)",
                         "gold_logprob": "gold log-likelihood (mean per token)"}
JUDGED = {"win": "win rate vs reference", "mt_bench_score": "MT-Bench score"}   # studykit.judges' columns
SCORE = "score"   # the evaluation's own per-item score: lenient accuracy under the verifier, else the judge's column
METRICS = (*ACCURACY, *PER_PROMPT, *TEACHER_FORCED, *JUDGED, SCORE, "auroc")
TOP_KEYS = ("claims", "interpretation")
REQUIRED = ("id", "paper", "source", "claim", "kind")
TEST_KEYS = {"treatment", "control", "metric", "direction", "families"}
KINDS = ("paper", "kit")
REGIME_KEYS = {"model", "data", "steps"}
PRECONDITIONS = ("signal_share", "changed_replies", "quality_gain")
HEADLINE_SEEDS = 5  # a headline claim carries a verdict only from at least this many training seeds


def bibliography_keys(path: Path = BIBLIOGRAPHY) -> set[str]:
    return set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", Path(path).read_text(encoding="utf-8")))


def _read(study: str | Path) -> tuple[Path, list, str | None]:
    """A claims file's path, entries and interpretation (a name under ``conf/claims/`` or a path), checked at the
    top level: a list of entries, or a mapping of :data:`TOP_KEYS` with the list under ``claims``."""
    path = Path(study) if str(study).endswith((".yaml", ".yml")) else CLAIMS_DIR / f"{study}.yaml"
    if not path.is_file():
        raise ClaimsError(f"{path}: no claims file")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ClaimsError(f"{path}: not a readable YAML file ({type(err).__name__})") from None
    interpretation = None
    if isinstance(document, dict):
        unknown = sorted(set(document) - set(TOP_KEYS))
        if unknown:
            raise ClaimsError(f"{path}: unknown top-level keys {unknown}; allowed {list(TOP_KEYS)}")
        interpretation = document.get("interpretation")
        if "interpretation" in document and (not isinstance(interpretation, str) or not interpretation.strip()):
            raise ClaimsError(f"{path}: interpretation must be a non-empty paragraph of text")
        document = document.get("claims")
    if not isinstance(document, list) or not document:
        raise ClaimsError(f"{path}: expected a non-empty list of claim entries (alone, or under 'claims:')")
    return path, document, interpretation


def load_interpretation(study: str | Path) -> str | None:
    """The hand-written interpretation of a study's committed result (``interpretation:``), if its file has one."""
    return _read(study)[2]


def load_claims(study: str | Path) -> list[dict]:
    """The validated claim entries of a study (a name under ``conf/claims/`` or a path)."""
    path, entries, _ = _read(study)
    keys, seen = bibliography_keys(), set()
    for n, entry in enumerate(entries):
        where = f"{path.name}[{n}]"
        if not isinstance(entry, dict):
            raise ClaimsError(f"{where}: expected a mapping, got {type(entry).__name__}")
        missing = [k for k in REQUIRED if not entry.get(k)]
        if missing:
            raise ClaimsError(f"{where}: missing {missing}")
        where = f"{path.name}: claim '{entry['id']}'"
        if entry["id"] in seen:
            raise ClaimsError(f"{where}: duplicate id")
        seen.add(entry["id"])
        if entry["paper"] not in keys:
            raise ClaimsError(f"{where}: paper '{entry['paper']}' is not a key of {BIBLIOGRAPHY.name}")
        if ("test" in entry) == ("not_tested" in entry):
            raise ClaimsError(f"{where}: give exactly one of 'test' and 'not_tested'")
        if "test" in entry:
            _check_test(where, entry["test"])
        _check_guards(where, entry)
    return entries


def _check_guards(where: str, entry: dict) -> None:
    """``kind`` (paper | kit), the paper's ``regime`` (model, data, steps) on paper claims, ``requires`` and
    ``headline``."""
    if entry["kind"] not in KINDS:
        raise ClaimsError(f"{where}: kind '{entry['kind']}' is not one of {KINDS}")
    regime = entry.get("regime")
    if entry["kind"] == "paper" and (not isinstance(regime, dict) or set(regime) != REGIME_KEYS):
        raise ClaimsError(f"{where}: a paper claim needs regime: {{model, data, steps}} (the paper's), got {regime!r}")
    requires = entry.get("requires", {})
    if not isinstance(requires, dict) or set(requires) - set(PRECONDITIONS):
        raise ClaimsError(f"{where}: requires must map preconditions {PRECONDITIONS} to minimum values, "
                          f"got {requires!r}")
    if not isinstance(entry.get("headline", False), bool):
        raise ClaimsError(f"{where}: headline must be true or false, got {entry['headline']!r}")
    inert = entry.get("inert_arm")
    if inert is not None:
        test = entry.get("test") or {}
        lower = test.get("treatment") if test.get("direction") == "less" else test.get("control")
        if (not isinstance(inert, dict) or set(inert) != {"arm", "witness"} or inert["arm"] != lower
                or inert["witness"] in (test.get("treatment"), test.get("control"))):
            raise ClaimsError(f"{where}: inert_arm must be {{arm: {lower} (the arm the test says is lower), witness: "
                              f"<the same method trained where it should act>}}, got {inert!r}")
    effect = entry.get("paper_effect")
    if effect is not None and (isinstance(effect, bool) or not isinstance(effect, (int, float)) or effect == 0):
        raise ClaimsError(f"{where}: paper_effect must be a non-zero number (the paper's effect on the test's "
                          f"scale), got {effect!r}")


def _check_test(where: str, test) -> None:
    if not isinstance(test, dict) or not {"treatment", "control", "direction"} <= set(test):
        raise ClaimsError(f"{where}: test needs treatment, control and direction")
    unknown = set(test) - TEST_KEYS
    if unknown:
        raise ClaimsError(f"{where}: unknown test keys {sorted(unknown)}; allowed {sorted(TEST_KEYS)}")
    if test["direction"] not in DIRECTIONS:
        raise ClaimsError(f"{where}: direction '{test['direction']}' is not one of {DIRECTIONS}")
    if test.get("metric", "lenient") not in METRICS:
        raise ClaimsError(f"{where}: metric '{test['metric']}' is not one of {METRICS}")


def condition_matrix(predictions: pd.DataFrame, condition: str, metric: str, items: list[str]) -> pd.DataFrame:
    """(seeds × items) per-item values of one condition (``metric`` a score column, or ``reply``), items in order."""
    rows = predictions[predictions["condition"] == condition]
    table = rows.pivot_table(index="seed", columns="id", values=metric, aggfunc="first")
    missing = set(items) - set(table.columns)
    if missing:
        raise ValueError(f"condition '{condition}' has no prediction for {len(missing)} eval items, e.g. {sorted(missing)[:3]}")
    return table[items] if metric == "reply" else table[items].astype(float)


def paired_scores(predictions: pd.DataFrame, treatment: str, control: str, metric: str, items: list[str],
                  shared_starts: frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Two conditions' (seeds × items) values of ``metric`` on ``items``, aligned by :func:`paired_matrices`
    (``shared_starts``: the conditions that are a start the arms train from, :meth:`Evidence.shared_starts`)."""
    return paired_matrices(condition_matrix(predictions, treatment, metric, items),
                           condition_matrix(predictions, control, metric, items),
                           shared=(treatment in shared_starts, control in shared_starts))


def paired_matrices(t: pd.DataFrame, c: pd.DataFrame, shared: tuple[bool, bool] = (False, False)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Align two conditions' (seeds × items) tables on their common training seeds.  A condition whose only seed is
    :data:`UNTRAINED`, or a start recorded on one seed (``shared``: one run that every seed of the other trained
    from, e.g. the preference studies' SFT start), is compared with every seed of the other."""
    single = [list(m.index) == [UNTRAINED] or (start and len(m.index) == 1) for m, start in zip((t, c), shared)]
    if any(single):
        return t.to_numpy(), c.to_numpy()
    common = sorted(set(t.index) & set(c.index))
    if not common:
        raise ValueError(f"no common training seed: {sorted(t.index)} vs {sorted(c.index)}")
    return t.loc[common].to_numpy(), c.loc[common].to_numpy()


@dataclass
class Evidence:
    """What a study's analysis reads besides its predictions (``analysis_inputs.json`` and the RL signal log):
    family groups, conditions that are the same run (``aliases``), why a condition has no predictions
    (``not_run``), which conditions were trained here, their evaluated starts and placebos, our regime, and the
    per-step RL signal share (columns ``condition, seed, step, signal_share``)."""
    family_groups: dict = field(default_factory=dict)
    aliases: dict = field(default_factory=dict)
    not_run: dict = field(default_factory=dict)
    trained: list | None = None
    starts: dict = field(default_factory=dict)
    placebos: dict = field(default_factory=dict)
    regime: dict = field(default_factory=dict)
    rl_signal: pd.DataFrame | None = None

    def shared_starts(self) -> frozenset:
        """The declared starts: one recorded on a single seed is one run every seed of its arms trained from."""
        return frozenset(self.starts.values())

    def trained_conditions(self, predictions: pd.DataFrame) -> set[str]:
        """The declared trained conditions, or (undeclared) every condition with a training seed."""
        if self.trained is not None:
            return set(self.trained)
        return set(predictions.loc[predictions["seed"] != UNTRAINED, "condition"])


def claims_table(claims: list[dict], predictions: pd.DataFrame, evidence: Evidence | None = None) -> pd.DataFrame:
    """One row per claim, guarded (:mod:`studykit.guards`): the paper's numbers and regime, ours, the paired
    difference over the families that are left, its 95% t interval (seeds and items random), the per-seed
    differences, the MDE, the raw and Holm-adjusted p-values, the guards' findings and the verdict.

    A comparison carries a verdict only when: each trained arm beats its placebo (a claim's ``inert_arm`` excepted,
    when its witness does); the claim's ``requires:``
    preconditions hold; a headline claim has ≥ :data:`HEADLINE_SEEDS` training seeds; families where an arm is
    degenerate are left out (none left: not tested), and so are items where the metric is undefined for an arm
    (counted in the flags); the arms are separable; no two families show significant
    effects of opposite sign (then one row per family group instead); and no single family carries it
    (leave-one-family-out, else *fragile*).  Supported / contradicted need Holm-adjusted
    p < 0.05 within the study; claims whose tests coincide numerically are merged into one row."""
    evidence = evidence or Evidence()
    groups = {"all": sorted(predictions["family"].unique()), **evidence.family_groups}
    family_of = predictions.drop_duplicates("id").set_index("id")["family"]
    trained = evidence.trained_conditions(predictions)
    profile = guards.family_profile(predictions)
    rows, tests, inseparable = [], [], []
    for entry, row, test in _tested(claims, rows):
        treatment, control = (evidence.aliases.get(test[k], test[k]) for k in ("treatment", "control"))
        metric, families = resolve_metric(test.get("metric", "lenient"), predictions), test.get("families", "all")
        if metric == "auroc":
            raise ClaimsError(f"claim '{entry['id']}': metric 'auroc' claims go through auroc_claims_table")
        if families not in groups:
            raise ClaimsError(f"claim '{entry['id']}': family group '{families}' not given; have {sorted(groups)}")
        row.update(comparison=f"{treatment} − {control}", metric=metric_label(metric), families=families)
        if treatment == control:
            rows.append({**row, "verdict": f"not separable: {test['treatment']} and {test['control']} are the "
                                           "same run by construction"})
            continue
        available = set(predictions["condition"])
        if not {treatment, control} <= available:
            missing = sorted({treatment, control} - available)
            why = "; ".join(f"{m}: {evidence.not_run.get(m, 'not run in this study')}" for m in missing)
            rows.append({**row, "verdict": f"not tested: {why}"})
            continue
        checks, withheld = _arm_checks(entry, (treatment, control), predictions, evidence, trained)
        excluded = guards.degenerate_families(profile, [treatment, control], groups[families]) \
            if metric in (*ACCURACY, *JUDGED) else {}
        kept = [f for f in groups[families] if f not in excluded]
        row.update(excluded_families="; ".join(f"{f} ({why})" for f, why in excluded.items()), guards=checks)
        if not kept:
            rows.append({**row, "verdict": "not tested: degenerate arms on every family (" + "; ".join(
                f"{f}: {why}" for f, why in excluded.items()) + ")"})
            continue
        if metric not in predictions.columns:
            rows.append({**row, "verdict": f"not tested: {metric} is not in this evidence"})
            continue
        items, undefined = defined_items(predictions, (treatment, control), metric,
                                          sorted(family_of.index[family_of.isin(kept)]))
        if not items:
            rows.append({**row, "verdict": f"not tested: no item where both arms have {metric}"})
            continue
        t, c = paired_scores(predictions, treatment, control, metric, items, evidence.shared_starts())
        replies = (None, None)
        if "reply" in predictions.columns and predictions.loc[predictions["id"].isin(items), "reply"].notna().all():
            replies = paired_scores(predictions, treatment, control, "reply", items, evidence.shared_starts())
        same, flags = guards.identity(t, c, *replies)
        seeds = max(t.shape[0], c.shape[0])
        if entry.get("headline") and seeds < HEADLINE_SEEDS:
            withheld = "; ".join(filter(None, [withheld, f"headline claim on {seeds} seed(s), needs ≥ "
                                                         f"{HEADLINE_SEEDS}"]))
        row["flags"] = "; ".join(flags + ([f"{undefined} item(s) left out: {metric} undefined for an arm"]
                                          if undefined else []))
        strata = family_of[items].to_numpy()
        if same:
            inseparable.append((len(rows), entry, test, *np.broadcast_arrays(t, c), strata, None))
            rows.append({**_numbers_of(row, t, c), "verdict": same})
            continue
        partition = _partition(evidence.family_groups, kept)
        _add_test(rows, tests, row, entry, test, *np.broadcast_arrays(t, c), strata, withheld, partition)
    _resolve(rows, tests)
    return _merge_identical(pd.DataFrame(rows), tests + inseparable)


def defined_items(predictions: pd.DataFrame, arms, metric: str, items: list[str]) -> tuple[list[str], int]:
    """(the items on which ``metric`` has a numeric value in every seed of every arm, how many were left out): a
    per-prompt measurement can be undefined (CRC diversity among valid samples when none is valid), and pairing
    needs both arms."""
    rows = predictions[predictions["condition"].isin(arms) & predictions["id"].isin(items)]
    undefined = set(rows.loc[pd.to_numeric(rows[metric], errors="coerce").isna(), "id"])
    kept = [i for i in items if i not in undefined]
    return kept, len(items) - len(kept)


def _partition(family_groups: dict, families: list[str]) -> dict[str, str] | None:
    """{family: group} when the study's family groups split these families into ≥ 2 disjoint groups (e.g.
    verifiable / open-ended prompts), else None."""
    inside = {g: set(fs) & set(families) for g, fs in family_groups.items() if set(fs) & set(families)}
    members = [f for fs in inside.values() for f in fs]
    if len(inside) < 2 or len(members) != len(set(members)) or set(members) != set(families):
        return None
    return {f: g for g, fs in inside.items() for f in fs}


def _add_test(rows: list, tests: list, row: dict, entry: dict, test: dict, t: np.ndarray, c: np.ndarray,
              strata: np.ndarray, withheld: str | None, partition: dict | None) -> None:
    """Add the comparison as one test — or, when two families show significant effects of opposite sign, a
    "not pooled" row and one test per family group (the study's groups where they split the families, else per
    family; a group whose own families still disagree is split again)."""
    opposite = _opposite(guards.family_effects(t, c, strata))
    if not opposite:
        tests.append((len(rows), entry, test, t, c, strata, withheld))
        rows.append(_numbers_of(row, t, c))
        return
    units = np.array([partition[f] for f in strata]) if partition else strata
    rows.append({**_numbers_of(row, t, c), "verdict": f"not pooled: opposite effects ({opposite}); one row per "
                                                      f"{'family group' if partition else 'family'} below"})
    for unit in dict.fromkeys(units):
        keep = units == unit
        sub = {**row, "id": f"{row['id']} [{unit}]", "families": unit}
        _add_test(rows, tests, sub, entry, test, t[:, keep], c[:, keep], strata[keep], withheld, None)


def _arm_checks(entry: dict, arms: tuple[str, str], predictions: pd.DataFrame, evidence: Evidence,
                trained: set[str]) -> tuple[str, str | None]:
    """(what the placebo and precondition guards measured, the reason the verdict is withheld or None).  An arm and
    its placebo are paired on the items both have the placebo metric for: accuracy, else quality (an arm's CRC
    prompts have no accuracy, an open-ended prompt no quality), else a judge's score (a paper profile's only one),
    else — for an arm scored only teacher-forced, as prob_objectives' model-weak arms — the claim's
    :data:`TEACHER_FORCED` metric.  The claim's ``inert_arm`` (the
    arm its paper expects not to learn) is compared with its placebo and the result shown, not required; its
    witness (the same method where it should act) must beat its own placebo."""
    notes, withheld = [], []
    claimed = resolve_metric(entry["test"].get("metric", "lenient"), predictions)
    fallback = ("lenient", "quality", *guards.JUDGED, *([claimed] if claimed in TEACHER_FORCED else []))
    inert = entry.get("inert_arm") or {}
    inert_arm, witness = (evidence.aliases.get(inert[k], inert[k]) if k in inert else None for k in ("arm", "witness"))
    if witness is not None and witness not in trained:
        withheld.append(f"the inert arm's witness {witness} is not a trained condition of this evidence")
    for arm in (*arms, *([witness] if witness in trained else [])):
        if arm not in trained:
            continue
        placebo = evidence.placebos.get(arm)
        if placebo is None or placebo not in set(predictions["condition"]):
            withheld.append(f"no placebo yet ({arm})")
            continue
        metric = next((m for m in fallback if m in predictions.columns and _scored_items(predictions, arm, m)), None)
        scored = (set(_scored_items(predictions, arm, metric)) & set(_scored_items(predictions, placebo, metric))
                  if metric else set())
        items = defined_items(predictions, (arm, placebo), metric, sorted(scored))[0] if scored else []
        if not items:
            withheld.append(f"no {metric or 'accuracy, quality or judged'} items for the placebo check ({arm})")
            continue
        a, p = paired_scores(predictions, arm, placebo, metric, items)
        beats, text = guards.placebo_check(a, p)
        inert = arm == inert_arm and arm in arms
        notes.append(f"{arm} − {placebo} {text}" + (" (expected inert: not required)" if inert else
                                                    " (the inert arm's witness)" if arm == witness else ""))
        if not beats and not inert:
            withheld.append(f"indistinguishable from placebo ({arm} − {placebo} {text})")
    for name, minimum in entry.get("requires", {}).items():
        for arm in (a for a in arms if a in trained):
            value = (guards.signal_share(evidence.rl_signal, arm) if name == "signal_share" else
                     _quality_gain_low(predictions, arm, evidence.starts.get(arm)) if name == "quality_gain" else
                     guards.changed_replies(predictions, arm, evidence.starts.get(arm)))
            if name == "signal_share" and not np.isfinite(value):
                continue  # no RL signal logged for this arm: the signal precondition is about the RL arms
            notes.append(f"{name}({arm}) = {value:.2f}")
            if not np.isfinite(value):
                withheld.append(f"{name} not measured ({arm})")
            elif value < float(minimum):
                withheld.append(f"{name} = {value:.2f} < {minimum} ({arm})")
    return "; ".join(notes), ("; ".join(dict.fromkeys(withheld)) or None)


def _quality_gain_low(predictions: pd.DataFrame, arm: str, start: str | None) -> float:
    """The lower 95% bound of ``arm``'s paired gain over its ``start`` in quality (the per-prompt ``quality``
    column, else lenient accuracy) on the same items — those with a quality (an open-ended prompt has none) —
    (:func:`studykit.stats.paired_difference`); NaN without a start."""
    metric = next((m for m in ("quality", "lenient") if m in predictions.columns), None)
    if start is None or metric is None or start not in set(predictions["condition"]):
        return float("nan")
    predictions = predictions.assign(**{metric: pd.to_numeric(predictions[metric], errors="coerce")})
    items, _ = defined_items(predictions, (arm, start), metric, _scored_items(predictions, arm, metric))
    if not items:
        return float("nan")
    arm_scores, start_scores = paired_scores(predictions, arm, start, metric, items, frozenset({start}))
    return float(paired_difference(arm_scores, start_scores).ci_low)


def _scored_items(predictions: pd.DataFrame, arm: str, metric: str) -> list[str]:
    """The items on which ``arm`` has a numeric ``metric``."""
    rows = predictions[predictions["condition"] == arm]
    return sorted(rows.loc[pd.to_numeric(rows[metric], errors="coerce").notna(), "id"].unique())


def _opposite(effects: pd.DataFrame) -> str:
    """The families with significant effects of opposite sign (unadjusted p < α), as text, or ''."""
    significant = effects[effects["p"] < ALPHA]
    up, down = significant[significant["difference"] > 0], significant[significant["difference"] < 0]
    if up.empty or down.empty:
        return ""
    return ", ".join(f"{r['family']} {r['difference']:+.3f}" for r in pd.concat([up, down]).to_dict(orient="records"))


def _numbers_of(row: dict, t: np.ndarray, c: np.ndarray) -> dict:
    result = paired_difference(t, c)
    return {**row, "treatment": float(np.mean(t)), "control": float(np.mean(c)), "difference": result.estimate,
            "ci_low": result.ci_low, "ci_high": result.ci_high,
            "per_seed": " ".join(f"{v:+.3f}" for v in result.per_seed), "df": result.df, "mde": result.mde,
            "p": result.p_value, "items": result.n_items, "seeds": result.n_seeds}


def _resolve(rows: list[dict], tests: list[tuple]) -> None:
    """Holm within the study over the comparisons that passed the guards, then the verdict and the
    leave-one-family-out check of each resolved one."""
    testable = [i for i, test in enumerate(tests) if test[-1] is None]
    adjusted = dict(zip(testable, holm([rows[tests[i][0]]["p"] for i in testable])))
    for i, (index, entry, test, t, c, strata, withheld) in enumerate(tests):
        row = rows[index]
        if withheld is not None:
            row["verdict"] = f"not tested: {withheld}"
            continue
        row["p_holm"] = float(adjusted[i])
        label = verdict(row["difference"], row["p_holm"], test["direction"], row["mde"], kind=entry["kind"])
        effect = entry.get("paper_effect")
        if label.startswith("not resolved") and effect is not None and row["mde"] > abs(effect):
            label = f"not testable at this scale (paper effect {effect:+.3f} vs MDE {row['mde']:.3f})"
        if not label.startswith(("not resolved", "not testable")):
            carrier = _carried_by(t, c, strata, row["difference"], row["p"])
            if carrier:
                label = f"fragile: carried by {carrier}"
        row["verdict"] = label


def _carried_by(t: np.ndarray, c: np.ndarray, strata: np.ndarray, estimate: float, p: float) -> str | None:
    """The family whose removal changes the raw label of the comparison (``estimate``, ``p``: CI excludes 0 on one
    side / not), or the only family."""
    families = list(dict.fromkeys(strata))
    if len(families) == 1:
        return f"{families[0]} (the only family left)"
    sign = np.sign(estimate) if p < ALPHA else 0
    for family in families:
        keep = strata != family
        part = paired_difference(t[:, keep], c[:, keep])
        if (np.sign(part.estimate) if part.p_value < ALPHA else 0) != sign:
            return family
    return None


def _merge_identical(table: pd.DataFrame, tests: list[tuple]) -> pd.DataFrame:
    """Claims whose tests are numerically the same comparison (same items, same score tables, same direction):
    one row, the ids and claims joined."""
    seen, drop = {}, []
    for index, entry, test, t, c, strata, withheld in tests:
        key = (test["direction"], t.shape, c.shape, t.tobytes(), c.tobytes(), tuple(strata))
        if key in seen:
            first = seen[key]
            for column, sep in (("id", " = "), ("claim", " / "), ("paper_numbers", " / ")):
                table.at[first, column] = f"{table.at[first, column]}{sep}{table.at[index, column]}"
            drop.append(index)
        else:
            seen[key] = index
    return table.drop(index=drop).reset_index(drop=True)


def auroc_claims_table(claims: list[dict], scores: dict[str, np.ndarray], labels: np.ndarray,
                       families: np.ndarray | None = None, *, seed: int = 0) -> pd.DataFrame:
    """The claims table of a scoring study: each ``metric: auroc`` claim compares the AUROC of two per-item scores
    (``scores[treatment]`` vs ``scores[control]``, or vs 0.5 when the control is ``chance``) for the same
    ``labels`` (:func:`studykit.stats.auroc_difference`), Holm within the study, and — given the items'
    ``families`` — leave-one-family-out: a resolved verdict that one family carries is *fragile*."""
    rows, tests = [], []
    for entry, row, test in _tested(claims, rows):
        if test.get("metric") != "auroc":
            raise ClaimsError(f"claim '{entry['id']}': a scoring study tests metric 'auroc', got '{test.get('metric')}'")
        treatment, control = test["treatment"], test["control"]
        row.update(comparison=f"{treatment} − {control}", metric="AUROC", families="all")
        missing = sorted({treatment, control} - set(scores) - {"chance"})
        if missing:
            rows.append({**row, "verdict": f"not tested: {missing} not scored"})
            continue
        result = auroc_difference(labels, scores[treatment], None if control == "chance" else scores[control], seed=seed)
        control_auroc = 0.5 if control == "chance" else _auc(labels, scores[control])
        tests.append((len(rows), entry, test, treatment, control))
        rows.append({**row, "treatment": _auc(labels, scores[treatment]), "control": control_auroc,
                     "difference": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high,
                     "per_seed": f"{result.estimate:+.3f}", "mde": result.mde, "p": result.p_value,
                     "items": result.n_items, "seeds": 1, "flags": "one scoring pass (no training seeds)"})
    adjusted = holm([rows[i]["p"] for i, *_ in tests])
    for (index, entry, test, treatment, control), p_holm in zip(tests, adjusted):
        row = rows[index]
        row["p_holm"] = float(p_holm)
        label = verdict(row["difference"], p_holm, test["direction"], row["mde"], kind=entry["kind"])
        if families is not None and not label.startswith("not resolved"):
            label = _auroc_fragility(label, labels, scores, treatment, control, np.asarray(families), seed)
        row["verdict"] = label
    return pd.DataFrame(rows)


def _auroc_fragility(label: str, labels, scores, treatment: str, control: str, families: np.ndarray,
                     seed: int) -> str:
    for family in dict.fromkeys(families):
        keep = families != family
        if labels[keep].all() or not labels[keep].any():
            return f"fragile: carried by {family} (the only family with both labels)"
        part = auroc_difference(labels[keep], scores[treatment][keep],
                                None if control == "chance" else scores[control][keep], seed=seed)
        if part.p_value >= ALPHA:
            return f"fragile: carried by {family}"
    return label


def resolve_metric(metric: str, predictions: pd.DataFrame) -> str:
    """A claim's metric as a column of ``predictions``: :data:`SCORE` becomes the evaluation's per-item score
    (:data:`studykit.guards.SCORES`, the first the predictions have); any other metric is itself."""
    if metric != SCORE:
        return metric
    return next((m for m in guards.SCORES if m in predictions.columns), "lenient")


def metric_label(metric: str) -> str:
    """How a claims table names a metric: "lenient accuracy", a judge's column ("win rate vs reference"), or the
    per-prompt measurement's own name."""
    return (f"{metric} accuracy" if metric in ACCURACY else TEACHER_FORCED_LABELS[metric]
            if metric in TEACHER_FORCED else JUDGED.get(metric, metric.replace("_", " ")))


def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels, bool), np.asarray(scores, float)))


def _tested(claims: list[dict], rows: list[dict]):
    """(entry, its first columns, its test) for each claim with a test; an untested claim's row (its reason as the
    verdict) is appended to ``rows`` as it comes, so the table keeps the YAML's order."""
    for entry in claims:
        row = {"id": entry["id"], "kind": entry.get("kind", "paper"), "headline": bool(entry.get("headline")),
               "paper": entry["paper"], "source": entry["source"], "claim": entry["claim"],
               "paper_numbers": _numbers(entry.get("paper_numbers")), "paper_regime": _numbers(entry.get("regime"))}
        if "not_tested" in entry:
            rows.append({**row, "verdict": "not tested: " + entry["not_tested"]})
        else:
            yield entry, row, entry["test"]


def _numbers(numbers) -> str:
    if not numbers:
        return "—"
    if isinstance(numbers, dict):
        return ", ".join(f"{k} {v}" for k, v in numbers.items())
    return str(numbers)


def conclusions(table: pd.DataFrame) -> list[str]:
    """One sentence per claims-table row, generated from its verdict and numbers (no verdict the table does not
    print)."""
    out = []
    for row in table.to_dict(orient="records"):
        head = f"{row['claim']} ({row['paper']}; {row['id']})"
        difference = row.get("difference", np.nan)
        if not isinstance(difference, float) or not np.isfinite(difference):
            out.append(f"{head}: {row['verdict']}.")
            continue
        ours = (f"{row['comparison']} = {difference:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] "
                f"{row['metric']}, {int(row['items'])} items × {int(row['seeds'])} seed(s), per seed {row['per_seed']}")
        label = row["verdict"]
        if label.startswith("not resolved"):
            out.append(f"{head}: not resolved at this power — {ours}; the smallest difference this comparison "
                       f"detects with 80% power is {row['mde']:.3f}.")
        elif label.startswith("not testable"):
            out.append(f"{head}: {label} — {ours}; a miniature this small cannot detect the paper's effect, so "
                       "its result neither supports nor contradicts the paper.")
        elif label.startswith(("not separable", "not tested", "not pooled")):
            out.append(f"{head}: {label} — {ours}; this says nothing about the claim's effect.")
        else:
            out.append(f"{head}: {label} — {ours}, Holm-adjusted p = {row['p_holm']:.3g}.")
    return out


def predictions_frame(frame: pd.DataFrame, condition: str, seed: int = UNTRAINED) -> pd.DataFrame:
    """Tag one evaluation's predictions (from :func:`studykit.evaluate.evaluate_records`) with its condition and
    training seed (:data:`UNTRAINED` for a model that was not trained here), ready to concatenate into the long
    table :func:`claims_table` reads."""
    return frame.assign(condition=condition, seed=int(seed))
