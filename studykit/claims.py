"""Paper claims → verdicts: one function turns the claims YAML of a study and its per-item predictions into the
claims table every notebook shows.

A claim entry (``conf/claims/<study>.yaml``)::

    - id: dft.beats_sft_in_domain
      paper: wu2025dft                  # a key of references.bib
      source: Table 1, Qwen2.5-Math-1.5B, math average
      claim: DFT beats SFT on the trained domain
      paper_numbers: {treatment: 31.58, control: 18.01}
      test: {treatment: dft, control: sft, metric: lenient, direction: greater, families: in_domain}

``test.families`` names a family group the notebook passes (``in_domain``, ``ood``; ``all`` by default).
``test.metric`` is a per-item column of the predictions: ``strict`` / ``lenient`` correctness, or a per-prompt
measurement of :data:`PER_PROMPT` (e.g. the embedding diversity of a prompt's samples, :mod:`studykit.diversity`).
``metric: auroc`` tests a scorer instead of a trained model: treatment and control name per-item scores (or
``chance``) and the difference is their AUROC for a per-item label (:func:`auroc_claims_table`).  An entry
with ``not_tested: <why>`` instead of ``test`` is listed with that reason.  The verdict is
:func:`studykit.stats.verdict` on the paired difference of :func:`studykit.stats.paired_difference`.

Conditions that are the same training run by construction (``aliases``: e.g. GRAPE picking exactly S3FT's items)
are evaluated once, and claims whose tests then coincide are merged into one row.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import CONF_DIR, ROOT
from .stats import DIRECTIONS, paired_difference, verdict

CLAIMS_DIR = CONF_DIR / "claims"
BIBLIOGRAPHY = ROOT / "references.bib"
ACCURACY = ("strict", "lenient")
PER_PROMPT = ("ead", "embedding_diversity", "vendi", "quality", "crc_valid", "crc_distinct")
METRICS = (*ACCURACY, *PER_PROMPT, "auroc")
REQUIRED = ("id", "paper", "source", "claim")
TEST_KEYS = {"treatment", "control", "metric", "direction", "families"}


class ClaimsError(ValueError):
    """A claims file that does not follow the schema."""


def bibliography_keys(path: Path = BIBLIOGRAPHY) -> set[str]:
    return set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", Path(path).read_text(encoding="utf-8")))


def load_claims(study: str | Path) -> list[dict]:
    """The validated claim entries of a study (a name under ``conf/claims/`` or a path)."""
    path = Path(study) if str(study).endswith((".yaml", ".yml")) else CLAIMS_DIR / f"{study}.yaml"
    if not path.is_file():
        raise ClaimsError(f"{path}: no claims file")
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ClaimsError(f"{path}: not a readable YAML file ({type(err).__name__})") from None
    if not isinstance(entries, list) or not entries:
        raise ClaimsError(f"{path}: expected a non-empty list of claim entries")
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
    return entries


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


UNTRAINED = -1  # the seed of a condition that involves no training (e.g. the base model): compared with every seed


def condition_matrix(predictions: pd.DataFrame, condition: str, metric: str, items: list[str]) -> pd.DataFrame:
    """(seeds × items) per-item scores of one condition, items in the given order."""
    rows = predictions[predictions["condition"] == condition]
    table = rows.pivot_table(index="seed", columns="id", values=metric, aggfunc="first")
    missing = set(items) - set(table.columns)
    if missing:
        raise ValueError(f"condition '{condition}' has no prediction for {len(missing)} eval items, e.g. {sorted(missing)[:3]}")
    return table[items].astype(float)


def paired_matrices(t: pd.DataFrame, c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Align two conditions' (seeds × items) tables on their common training seeds; a condition whose only seed is
    :data:`UNTRAINED` is compared with every seed of the other."""
    if list(t.index) == [UNTRAINED] or list(c.index) == [UNTRAINED]:
        return t.to_numpy(), c.to_numpy()
    common = sorted(set(t.index) & set(c.index))
    if not common:
        raise ValueError(f"no common training seed: {sorted(t.index)} vs {sorted(c.index)}")
    return t.loc[common].to_numpy(), c.loc[common].to_numpy()


IDENTICAL = "not separable: the two conditions are right and wrong on exactly the same items (every seed)"


def claims_table(claims: list[dict], predictions: pd.DataFrame, *, family_groups: dict[str, list[str]] | None = None,
                 aliases: dict[str, str] | None = None, not_run: dict[str, str] | None = None,
                 seed: int = 0) -> pd.DataFrame:
    """One row per claim (claims that test the same comparison merged): the paper's numbers, ours (treatment and
    control accuracy), the paired difference with its 95% CI, the MDE, the items and seeds, and the verdict.

    ``predictions``: long table with ``condition, seed, id, family`` and the ``strict`` / ``lenient`` columns.
    ``not_run`` says why a condition has no predictions (e.g. its subset was too small to train on every seed)."""
    aliases = aliases or {}
    groups = {"all": sorted(predictions["family"].unique()), **(family_groups or {})}
    family_of = predictions.drop_duplicates("id").set_index("id")["family"]
    rows, merged = [], {}
    for entry, row, test in _tested(claims, rows):
        treatment, control = (aliases.get(test[k], test[k]) for k in ("treatment", "control"))
        metric, families = test.get("metric", "lenient"), test.get("families", "all")
        if metric == "auroc":
            raise ClaimsError(f"claim '{entry['id']}': metric 'auroc' claims go through auroc_claims_table")
        if families not in groups:
            raise ClaimsError(f"claim '{entry['id']}': family group '{families}' not given; have {sorted(groups)}")
        key = (treatment, control, metric, families, test["direction"])
        if key in merged:
            first = rows[merged[key]]
            first.update(id=f"{first['id']} = {entry['id']}", claim=f"{first['claim']} / {entry['claim']}",
                         paper_numbers=f"{first['paper_numbers']} / {row['paper_numbers']}")
            continue
        if treatment == control:
            rows.append({**row, "comparison": f"{test['treatment']} − {test['control']}", "verdict":
                         f"not resolved: {test['treatment']} and {test['control']} are the same run by construction"})
            continue
        available = set(predictions["condition"])
        if not {treatment, control} <= available:
            missing = sorted({treatment, control} - available)
            why = "; ".join(f"{m}: {(not_run or {}).get(m, 'not run in this study')}" for m in missing)
            rows.append({**row, "comparison": f"{treatment} − {control}", "verdict": f"not tested: {why}"})
            continue
        items = sorted(set(family_of.index[family_of.isin(groups[families])]))
        t, c = paired_matrices(condition_matrix(predictions, treatment, metric, items),
                               condition_matrix(predictions, control, metric, items))
        result = paired_difference(t, c, family_of[items].to_numpy(), seed=seed)
        merged[key] = len(rows)
        rows.append({**row, "comparison": f"{treatment} − {control}", "metric": metric_label(metric),
                     "families": families, "treatment": float(t.mean()), "control": float(c.mean()),
                     "difference": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high,
                     "mde": result.mde, "items": result.n_items, "seeds": result.n_seeds,
                     "verdict": IDENTICAL if np.array_equal(t, c) else
                     verdict(result.ci_low, result.ci_high, test["direction"], result.mde)})
    return pd.DataFrame(rows)


def auroc_claims_table(claims: list[dict], scores: dict[str, np.ndarray], labels: np.ndarray, *,
                       seed: int = 0) -> pd.DataFrame:
    """The claims table of a scoring study: each ``metric: auroc`` claim compares the AUROC of two per-item scores
    (``scores[treatment]`` vs ``scores[control]``, or vs 0.5 when the control is ``chance``) for the same
    ``labels``, with :func:`studykit.stats.auroc_difference` and the one verdict rule."""
    from .stats import auroc_difference

    rows = []
    for entry, row, test in _tested(claims, rows):
        if test.get("metric") != "auroc":
            raise ClaimsError(f"claim '{entry['id']}': a scoring study tests metric 'auroc', got '{test.get('metric')}'")
        treatment, control = test["treatment"], test["control"]
        missing = sorted({treatment, control} - set(scores) - {"chance"})
        if missing:
            rows.append({**row, "comparison": f"{treatment} − {control}", "verdict": f"not tested: {missing} not scored"})
            continue
        result = auroc_difference(labels, scores[treatment], None if control == "chance" else scores[control], seed=seed)
        control_auroc = 0.5 if control == "chance" else _auc(labels, scores[control])
        rows.append({**row, "comparison": f"{treatment} − {control}", "metric": "AUROC", "families": "all",
                     "treatment": _auc(labels, scores[treatment]), "control": control_auroc,
                     "difference": result.estimate, "ci_low": result.ci_low, "ci_high": result.ci_high,
                     "mde": result.mde, "items": result.n_items, "seeds": 1,
                     "verdict": verdict(result.ci_low, result.ci_high, test["direction"], result.mde)})
    return pd.DataFrame(rows)


def metric_label(metric: str) -> str:
    """How a claims table names a metric: "lenient accuracy", or the per-prompt measurement's own name."""
    return f"{metric} accuracy" if metric in ACCURACY else metric.replace("_", " ")


def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels, bool), np.asarray(scores, float)))


def _tested(claims: list[dict], rows: list[dict]):
    """(entry, its first columns, its test) for each claim with a test; an untested claim's row (its reason as the
    verdict) is appended to ``rows`` as it comes, so the table keeps the YAML's order."""
    for entry in claims:
        row = {"id": entry["id"], "paper": entry["paper"], "source": entry["source"], "claim": entry["claim"],
               "paper_numbers": _numbers(entry.get("paper_numbers"))}
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
    """One sentence per claims-table row, generated from its verdict."""
    out = []
    for row in table.to_dict(orient="records"):
        head = f"{row['claim']} ({row['paper']}; {row['id']})"
        if row["verdict"].startswith("not tested") or not np.isfinite(row.get("difference", np.nan)):
            out.append(f"{head}: {row['verdict']}.")
            continue
        ours = (f"{row['comparison']} = {row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] "
                f"{row['metric']}, {int(row['items'])} items × {int(row['seeds'])} seed(s)")
        if row["verdict"] == IDENTICAL:
            out.append(f"{head}: {IDENTICAL} — {ours}; no eval set separates them, so this says nothing about "
                       "the claim's effect.")
        elif row["verdict"] == "supported":
            out.append(f"{head}: supported here — {ours}.")
        elif row["verdict"] == "contradicted":
            out.append(f"{head}: contradicted here — {ours}.")
        else:
            out.append(f"{head}: not resolved at this power — {ours}; the smallest difference this comparison "
                       f"detects with 80% power is {row['mde']:.3f}.")
    return out


def predictions_frame(frame: pd.DataFrame, condition: str, seed: int = UNTRAINED) -> pd.DataFrame:
    """Tag one evaluation's predictions (from :func:`studykit.evaluate.evaluate_records`) with its condition and
    training seed (:data:`UNTRAINED` for a model that was not trained here), ready to concatenate into the long
    table :func:`claims_table` reads."""
    return frame.assign(condition=condition, seed=int(seed))
