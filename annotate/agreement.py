"""Inter-annotator agreement for attribute tagging: Krippendorff's alpha, Fleiss' kappa, per-scope
agreement rows and the style-persona views. No Django here; selectors turn answers into a DataFrame
and the report renders what this module returns.

Input frames hold one row per answer (one person's response to one attribute of one item):

    item       hashable   the item (product) id
    rater      hashable   the annotator id
    group      str        the annotator's group (team), e.g. "merchandising", "customer_experience"
    attribute  str        the attribute name, e.g. "neckline", "minimalist"
    value      object     str option ("single"), iterable of str options ("multi"), int 1-5 ("ordinal")

Attribute kinds and how each is measured:

- "single": nominal single choice. The answer `CANT_TELL` ("cant_tell") means the annotator could
  not tell; it is missing data, not a category (Krippendorff 2011 treats missing values as absent
  from the reliability matrix).
- "multi": multi choice. Each option is its own binary nominal variable (selected or not) among the
  annotators who answered the attribute; an empty selection is a valid answer ("none of these").
- "ordinal": integer ratings on `ORDINAL_DOMAIN` (1-5), Krippendorff's ordinal metric.

Sources:
    Krippendorff, K. (2011). Computing Krippendorff's Alpha-Reliability. Annenberg School for
        Communication, University of Pennsylvania, Departmental Papers 43.
    Hayes, A. F. & Krippendorff, K. (2007). Answering the call for a standard reliability measure
        for coding data. Communication Methods and Measures 1(1), 77-89.
    Fleiss, J. L. (1971). Measuring nominal scale agreement among many raters. Psychological
        Bulletin 76(5), 378-382.
Alpha's arithmetic is delegated to the `krippendorff` package; Fleiss' kappa is the 10-line formula
of statsmodels' `statsmodels.stats.inter_rater.fleiss_kappa(method="fleiss")`, computed here with
numpy (importing statsmodels cost a web worker's first agreement report ~5-8 s, issue 16; the tests
check both agree). This module builds their inputs and decides when a coefficient is undefined.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import krippendorff
import numpy as np
import pandas as pd

Level = Literal["nominal", "ordinal", "interval"]
Kind = Literal["single", "multi", "ordinal"]

LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval")
KIND_LEVELS: dict[str, str] = {"single": "nominal", "multi": "nominal", "ordinal": "ordinal"}
CANT_TELL = "cant_tell"
ORDINAL_DOMAIN: tuple[int, ...] = (1, 2, 3, 4, 5)
PERSONAS: tuple[str, ...] = ("minimalist", "romantic", "glamorous", "sexy", "edgy", "boho", "preppy", "casual")
RATING_COLUMNS: tuple[str, ...] = ("item", "rater", "value")
ANSWER_COLUMNS: tuple[str, ...] = ("item", "rater", "group", "attribute", "value")
SCOPE_ALL = "all"
# An item enters alpha and kappa only with this many ratings of a variable (it is then pairable):
# the overlap a tagging campaign must reach per attribute for the report to measure it.
PAIRABLE_MIN_RATINGS = 2

# Column order of `agreement_rows` (and so of its CSV).
AGREEMENT_ROW_KEYS: tuple[str, ...] = (
    "attribute",
    "kind",
    "scope",
    "level",
    "item_count",
    "answer_count",
    "alpha",
    "alpha_low",
    "alpha_high",
    "fleiss_kappa",
    "fleiss_item_count",
    "fleiss_raters_per_item",
)


# --------------------------------------------------------------------------------------------------
# Krippendorff's alpha
# --------------------------------------------------------------------------------------------------


def krippendorff_alpha(
    ratings: pd.DataFrame, *, level: Level, value_domain: Sequence[Any] | None = None
) -> float | None:
    """Krippendorff's alpha of one variable (one attribute, or one option of a multi-choice one).

    alpha = 1 - D_o / D_e, observed over expected disagreement, computed from the coincidence matrix
    of pairable values (Krippendorff 2011, sections A-E; missing data allowed). Builds the
    raters x items reliability matrix (float64, NaN where a rater did not rate an item) and calls
    `krippendorff.alpha(reliability_data=..., level_of_measurement=level, value_domain=...)`.

    Args:
        ratings: DataFrame with columns item, rater, value; one row per (item, rater), already
            restricted to one variable with missing answers removed (rows whose value is None/NaN
            are dropped defensively). Other columns are ignored.
        level: "nominal" (any hashable values; mapped to integer codes 0..V-1 in sorted order, which
            do not change a nominal alpha), "ordinal" or "interval" (numeric values; "ordinal" uses
            Krippendorff's rank-based metric, "interval" the squared difference).
        value_domain: the possible values. Nominal: the category list (default: the values that
            occur). Ordinal/interval: the ordered scale, e.g. `ORDINAL_DOMAIN` (default: the values
            that occur). Unused categories have frequency 0; in the ordinal metric
            delta(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 they contribute nothing, so passing
            the full 1..5 scale never changes the figure but makes the domain explicit.

    Returns:
        alpha as a float in (-inf, 1] (1 = perfect agreement, 0 = chance, < 0 = systematic
        disagreement), or None when alpha is undefined: no item has 2+ ratings (nothing is
        pairable) or only one value occurs among the pairable values (D_e = 0).

    Raises:
        ValueError: a required column is missing, an (item, rater) pair occurs twice, `level` is
            unknown, a value lies outside `value_domain`, or an ordinal/interval value is not numeric.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    ratings = _clean_ratings(ratings)
    # Items rated once are not pairable and carry no information about agreement (Krippendorff 2011,
    # step B drops them); dropping them first also lets us test for D_e = 0 ourselves.
    pairable = ratings[ratings["item"].map(ratings["item"].value_counts()) >= PAIRABLE_MIN_RATINGS]
    if pairable.empty:
        return None
    if level == "nominal":
        domain = list(value_domain) if value_domain is not None else _sorted_values(pairable["value"].unique())
        code_of = {value: code for code, value in enumerate(domain)}
        unknown = set(pairable["value"]) - set(code_of)
        if unknown:
            raise ValueError(f"values outside value_domain: {sorted(map(repr, unknown))}")
        codes = pairable["value"].map(code_of).astype(np.float64)
        domain_codes = np.arange(len(domain), dtype=np.float64)
    else:
        codes = _numeric(pairable["value"])
        observed = np.unique(codes.to_numpy())
        domain_codes = (
            np.asarray(sorted(float(v) for v in value_domain), dtype=np.float64)
            if value_domain is not None
            else observed
        )
        if not np.isin(observed, domain_codes).all():
            raise ValueError(f"values outside value_domain: {sorted(set(observed) - set(domain_codes))}")
    if codes.nunique() < 2:
        # One value only: D_e = 0. The library raises when the domain has one value but returns NaN
        # (0/0, with a RuntimeWarning) when a wider value_domain was passed, so check here.
        return None
    matrix = (
        pairable.assign(code=codes)
        .pivot(index="rater", columns="item", values="code")
        .to_numpy(dtype=np.float64)  # (raters, items), NaN = not rated
    )
    try:
        alpha = float(
            krippendorff.alpha(reliability_data=matrix, value_domain=domain_codes, level_of_measurement=level)
        )
    except ValueError:
        # The library's own "undefined" errors (one value in the domain, nothing pairable); the checks
        # above should already have returned, this is the belt to their braces.
        return None
    return None if math.isnan(alpha) else alpha


ALPHA_RESAMPLES = 500


def alpha_interval(
    ratings: pd.DataFrame,
    *,
    level: Level,
    value_domain: Sequence[Any] | None = None,
    resamples: int = ALPHA_RESAMPLES,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """A 95% bootstrap interval of Krippendorff's alpha, resampling items (units) with replacement.

    Each pairable item u contributes (n_u n_u^T - diag(n_u)) / (m_u - 1) to the coincidence matrix
    (n_u: its count per value, m_u its ratings), so a resample's matrix is a weighted sum of those,
    and alpha = 1 - (n - 1) sum o_ck delta_ck / sum n_c n_k delta_ck follows (Krippendorff 2011;
    the ordinal delta is recomputed from each resample's marginals). Percentile interval (Efron &
    Tibshirani 1993) over `resamples` draws of a generator seeded with `seed`, so a report shows the
    same interval every time; resamples where alpha is undefined (one value) are left out. Hayes &
    Krippendorff (2007) bootstrap pairs of values instead; resampling items keeps each item's raters
    together, the usual choice when items, not coders, are the sample.

    Args:
        ratings, level, value_domain: as for `krippendorff_alpha` (same cleaning and coding).
        resamples: bootstrap draws.
        seed: the generator's seed.

    Returns:
        (low, high), the 2.5th and 97.5th percentiles; (None, None) when alpha is undefined or fewer
        than 2 items are pairable (nothing to resample).

    Raises:
        ValueError: as `krippendorff_alpha`.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    ratings = _clean_ratings(ratings)
    pairable = ratings[ratings["item"].map(ratings["item"].value_counts()) >= 2]
    if pairable["item"].nunique() < 2 or pairable["value"].nunique() < 2:
        return None, None
    if level == "nominal":
        domain = list(value_domain) if value_domain is not None else _sorted_values(pairable["value"].unique())
        code_of = {value: code for code, value in enumerate(domain)}
        if set(pairable["value"]) - set(code_of):
            raise ValueError("values outside value_domain")
        codes = pairable["value"].map(code_of).to_numpy(dtype=np.int64)
        scale = np.arange(len(domain), dtype=np.float64)
    else:
        values = _numeric(pairable["value"]).to_numpy()
        scale = np.asarray(
            sorted(float(v) for v in value_domain) if value_domain is not None else np.unique(values), np.float64
        )
        codes = np.searchsorted(scale, values)
        if (codes >= len(scale)).any() or not np.allclose(scale[np.minimum(codes, len(scale) - 1)], values):
            raise ValueError("values outside value_domain")
    items, item_index = np.unique(pairable["item"].to_numpy(dtype=object).astype(str), return_inverse=True)
    k = len(scale)
    counts = np.zeros((len(items), k))  # (items, values)
    np.add.at(counts, (item_index, codes), 1.0)
    m = counts.sum(axis=1)
    per_item = (counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(k)) / (m - 1)[:, None, None]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(items), np.full(len(items), 1.0 / len(items)), size=resamples).astype(np.float64)
    coincidences = (weights @ per_item.reshape(len(items), k * k)).reshape(resamples, k, k)  # (B, K, K)
    alphas = _alpha_from_coincidences(coincidences, level=level, scale=scale)
    alphas = alphas[np.isfinite(alphas)]
    if len(alphas) < resamples // 2:
        return None, None
    low, high = np.percentile(alphas, [2.5, 97.5])
    return float(low), float(high)


def _alpha_from_coincidences(coincidences: np.ndarray, *, level: str, scale: np.ndarray) -> np.ndarray:
    """Alpha of each (K, K) coincidence matrix in `coincidences` (B, K, K); NaN where undefined."""
    marginals = coincidences.sum(axis=2)  # (B, K): n_c
    n = marginals.sum(axis=1)  # (B,)
    k = len(scale)
    if level == "nominal":
        delta = np.broadcast_to(1.0 - np.eye(k), coincidences.shape)
    elif level == "interval":
        delta = np.broadcast_to((scale[:, None] - scale[None, :]) ** 2, coincidences.shape)
    else:  # ordinal: (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, from each matrix's own marginals
        idx = np.arange(k)
        low, high = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
        cumulative = np.cumsum(marginals, axis=1)
        between = cumulative[:, high] - cumulative[:, low] + marginals[:, low]  # (B, K, K)
        delta = (between - (marginals[:, :, None] + marginals[:, None, :]) / 2) ** 2
    observed = (coincidences * delta).sum(axis=(1, 2))
    expected = (marginals[:, :, None] * marginals[:, None, :] * delta).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1.0 - (n - 1) * observed / expected, np.nan)


# --------------------------------------------------------------------------------------------------
# Fleiss' kappa
# --------------------------------------------------------------------------------------------------


class FleissResult(NamedTuple):
    """Fleiss' kappa and the items it was computed on.

    Attributes:
        kappa: Fleiss' kappa in [-1, 1] (float), or None when undefined (fewer than 2 items with
            `raters_per_item` ratings, or a single category among them).
        item_count: how many items the kappa uses (items with exactly `raters_per_item` ratings).
        raters_per_item: k, the constant number of ratings per item used; None when no item has 2+.
    """

    kappa: float | None
    item_count: int
    raters_per_item: int | None


def fleiss_kappa(ratings: pd.DataFrame) -> FleissResult:
    """Fleiss' kappa for nominal ratings by many raters (Fleiss 1971).

    kappa = (P_bar - P_bar_e) / (1 - P_bar_e), where P_i = (sum_j n_ij^2 - k) / (k (k - 1)) is the
    agreement on item i among its k ratings, P_bar their mean over items, p_j the share of all
    ratings in category j and P_bar_e = sum_j p_j^2 the chance agreement. Fleiss' kappa needs the
    same number of ratings k on every item, so this uses only the items with exactly k ratings, k
    being the most common rating count >= 2 (ties go to the larger k, the more informative items),
    builds the items x categories count table (int64, rows sum to k) and computes the formula
    above on it (`fleiss_kappa_table`, what statsmodels' `fleiss_kappa(table, method="fleiss")`
    returns). Unlike Krippendorff's alpha it ignores the other items; `FleissResult.item_count` says how many it used.

    Args:
        ratings: DataFrame with columns item, rater, value (nominal, hashable); one row per
            (item, rater), missing answers removed (None/NaN values are dropped defensively).

    Returns:
        FleissResult(kappa, item_count, raters_per_item). kappa is None when fewer than 2 items have
        k ratings or a single category occurs among them (P_bar_e = 1: the formula would divide by
        zero, so this is checked first).

    Raises:
        ValueError: a required column is missing or an (item, rater) pair occurs twice.
    """
    ratings = _clean_ratings(ratings)
    counts = ratings.groupby("item").size()
    counts = counts[counts >= 2]
    if counts.empty:
        return FleissResult(None, 0, None)
    items_per_count = counts.value_counts()  # index: k, value: how many items have k ratings
    k = int(max(items_per_count.index, key=lambda c: (items_per_count[c], c)))
    used = ratings[ratings["item"].isin(counts.index[counts == k])]
    # (items, categories) counts; groupby-size, as pd.crosstab takes a slow pure-Python path under
    # pandas 3 (46 ms against 2 ms on 8,000 rows, bench/agreement.py).
    table = used.groupby(["item", "value"]).size().unstack(fill_value=0)
    item_count = int(table.shape[0])
    if item_count < 2 or table.shape[1] < 2:
        return FleissResult(None, item_count, k)
    return FleissResult(fleiss_kappa_table(table.to_numpy(dtype=np.int64)), item_count, k)


def fleiss_kappa_table(table: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) of an (items, categories) table of rating counts, every row
    summing to the same k >= 2: (P_bar - P_bar_e) / (1 - P_bar_e) as in `fleiss_kappa`; statsmodels'
    `fleiss_kappa(table, method="fleiss")`, without importing statsmodels.

    Raises:
        ValueError: not 2-D, rows with different or < 2 sums, or one category only (P_bar_e = 1).
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"need a non-empty (items, categories) table, got shape {table.shape}")
    per_item = table.sum(axis=1)
    k = per_item[0]
    if k < 2 or not np.all(per_item == k):
        raise ValueError("every item needs the same number k >= 2 of ratings")
    p_category = table.sum(axis=0) / table.sum()  # (categories,)
    p_item = ((table * table).sum(axis=1) - k) / (k * (k - 1))  # (items,) agreement on each item
    chance = float((p_category * p_category).sum())
    if chance >= 1.0:
        raise ValueError("Fleiss' kappa is undefined with one category")
    return float((p_item.mean() - chance) / (1.0 - chance))


# --------------------------------------------------------------------------------------------------
# Agreement rows per attribute and scope
# --------------------------------------------------------------------------------------------------


def agreement_rows(
    answers: pd.DataFrame,
    *,
    attributes: Mapping[str, Kind],
    ordinal_domain: Sequence[int] = ORDINAL_DOMAIN,
) -> list[dict[str, Any]]:
    """Agreement of every attribute in every scope: everyone, each group, each pair of groups.

    Scopes (the same list for every attribute, from the groups present anywhere in `answers`):
        "all"              every annotator's answers;
        "group:<name>"     the answers of that group's annotators, groups in sorted order;
        "pair:<a>|<b>"     a < b: the answers of both groups' annotators on the items that both
                           groups answered (after missing answers are dropped), so that the figure
                           speaks about the groups' shared items only.

    Variables: a "single" or "ordinal" attribute is one variable named after the attribute; a
    "multi" attribute gives one binary nominal variable per option, named "<attribute>:<option>"
    (options sorted; an option nobody selected does not appear), the value being whether the
    annotator selected the option, among the annotators who answered the attribute.

    Missing answers, dropped before anything is counted: None/NaN, and `CANT_TELL` for every kind
    (for "multi": a selection that is exactly {CANT_TELL}; `CANT_TELL` is never an option row).

    Args:
        answers: DataFrame with columns item, rater, group, attribute, value (see the module
            docstring); one row per (item, rater, attribute). Attributes absent from `attributes`
            are ignored. A "multi" value is an iterable of option strings (a plain string counts
            as a one-option selection); an "ordinal" value is numeric.
        attributes: {attribute name: kind}, kind in "single", "multi", "ordinal"; rows come out in
            this order.
        ordinal_domain: the rating scale passed to Krippendorff's ordinal alpha.

    Returns:
        list of dicts, one per (variable, scope), keys in `AGREEMENT_ROW_KEYS` order:
            attribute (str), kind (str), scope (str), level ("nominal" | "ordinal"),
            item_count (int: items with 2+ answers in the scope), answer_count (int: answers in the
            scope), alpha (float | None, `krippendorff_alpha`), fleiss_kappa (float | None),
            fleiss_item_count (int | None: items Fleiss' kappa used), fleiss_raters_per_item
            (int | None). The three Fleiss keys are None for ordinal attributes (not computed).

    Raises:
        ValueError: a required column is missing, an unknown kind, an (item, rater) pair answered
            the same attribute twice, or an ordinal value that is not numeric or lies outside
            `ordinal_domain`.
    """
    _require_columns(answers, ANSWER_COLUMNS)
    for attribute, kind in attributes.items():
        if kind not in KIND_LEVELS:
            raise ValueError(f"attribute {attribute!r}: kind must be one of {tuple(KIND_LEVELS)}, not {kind!r}")
    groups = _sorted_values(answers["group"].dropna().unique())
    rows: list[dict[str, Any]] = []
    for attribute, kind in attributes.items():
        level = KIND_LEVELS[kind]
        frame = answers.loc[answers["attribute"] == attribute, list(ANSWER_COLUMNS)]
        frame = _drop_missing(frame)
        _reject_duplicates(frame, ("item", "rater"), what=f"attribute {attribute!r}")
        for name, variable in _variables(attribute, kind, frame):
            for scope, scoped in _scoped(variable, groups):
                rows.append(_agreement_row(name, kind, scope, level, scoped, ordinal_domain))
    return rows


def _variables(attribute: str, kind: str, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(variable name, frame) pairs of one attribute: the attribute itself, or one per option."""
    if kind != "multi":
        return [(attribute, frame)]
    selections = frame["value"].map(_as_selection)
    options = _sorted_values(set().union(*selections) - {CANT_TELL}) if len(selections) else []
    return [
        (f"{attribute}:{option}", frame.assign(value=selections.map(lambda s, o=option: o in s))) for option in options
    ]


def _scoped(frame: pd.DataFrame, groups: Sequence[str]) -> Iterable[tuple[str, pd.DataFrame]]:
    """Yield (scope name, answers in scope) for "all", every group and every pair of groups."""
    yield SCOPE_ALL, frame
    for group in groups:
        yield f"group:{group}", frame[frame["group"] == group]
    for a, b in itertools.combinations(groups, 2):
        items_a = set(frame.loc[frame["group"] == a, "item"])
        items_b = set(frame.loc[frame["group"] == b, "item"])
        yield f"pair:{a}|{b}", frame[frame["group"].isin((a, b)) & frame["item"].isin(items_a & items_b)]


def _agreement_row(
    name: str, kind: str, scope: str, level: str, scoped: pd.DataFrame, ordinal_domain: Sequence[int]
) -> dict[str, Any]:
    ratings = scoped[list(RATING_COLUMNS)]
    per_item = ratings.groupby("item").size()
    if level == "nominal":
        alpha = krippendorff_alpha(ratings, level="nominal")
        interval = alpha_interval(ratings, level="nominal") if alpha is not None else (None, None)
        fleiss = fleiss_kappa(ratings)
        fleiss_values: tuple[Any, Any, Any] = (fleiss.kappa, fleiss.item_count, fleiss.raters_per_item)
    else:
        alpha = krippendorff_alpha(ratings, level="ordinal", value_domain=ordinal_domain)
        interval = (
            alpha_interval(ratings, level="ordinal", value_domain=ordinal_domain) if alpha is not None else (None, None)
        )
        fleiss_values = (None, None, None)
    return dict(
        zip(
            AGREEMENT_ROW_KEYS,
            (name, kind, scope, level, int((per_item >= 2).sum()), len(ratings), alpha, *interval, *fleiss_values),
            strict=True,
        )
    )


# --------------------------------------------------------------------------------------------------
# Style-persona views
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonaPairView:
    """How two groups compare on the style-persona ratings of the items both rated.

    Attributes:
        group_a, group_b: the two groups, group_a < group_b.
        mean_abs_diff: {persona: mean over common items of |mean rating of group_a - mean rating of
            group_b|}, in rating points (0-4 on a 1-5 scale); None when no item has ratings of that
            persona from both groups. Personas in the order given to `persona_views`.
        mad_item_count: {persona: number of items that mean uses}.
        cosine_item_count: items where both groups have at least one complete persona vector (a
            rater who rated every persona of the item); the cosine figures below use these items.
        within_a_median: median cosine similarity over every pair of group_a raters on the same
            item (pooled over items), None when there is no such pair; in [0, 1].
        within_a_pair_count: the number of those rater pairs.
        within_b_median, within_b_pair_count: the same for group_b.
        across_median: median over items of the cosine between the two groups' mean persona
            vectors; None when `cosine_item_count` is 0. In [0, 1].
        share_above_low: share of those items whose across-group cosine is strictly above
            `PersonaViews.threshold_low`, in [0, 1]; None when there are no items.
        share_above_high: the same for `PersonaViews.threshold_high`.
    """

    group_a: str
    group_b: str
    mean_abs_diff: dict[str, float | None]
    mad_item_count: dict[str, int]
    cosine_item_count: int
    within_a_median: float | None
    within_a_pair_count: int
    within_b_median: float | None
    within_b_pair_count: int
    across_median: float | None
    share_above_low: float | None
    share_above_high: float | None


@dataclass(frozen=True)
class PersonaViews:
    """The three persona views for every pair of groups (see `persona_views`).

    Attributes:
        personas: the persona attributes, in vector order.
        threshold_low, threshold_high: the cosine thresholds of `share_above_low`/`_high`.
        pairs: one `PersonaPairView` per pair of groups, sorted by (group_a, group_b); empty when
            fewer than two groups rated personas.
    """

    personas: tuple[str, ...]
    threshold_low: float
    threshold_high: float
    pairs: tuple[PersonaPairView, ...]

    def mad_rows(self) -> list[dict[str, Any]]:
        """Mean absolute difference as table/CSV rows, one per (pair, persona).

        Returns:
            list of dicts with keys group_a, group_b, persona, item_count, mean_abs_diff.
        """
        return [
            {
                "group_a": pair.group_a,
                "group_b": pair.group_b,
                "persona": persona,
                "item_count": pair.mad_item_count[persona],
                "mean_abs_diff": pair.mean_abs_diff[persona],
            }
            for pair in self.pairs
            for persona in self.personas
        ]

    def cosine_rows(self) -> list[dict[str, Any]]:
        """Cosine similarities as table/CSV rows, one per pair of groups.

        Returns:
            list of dicts with keys group_a, group_b, item_count, within_a_median,
            within_a_pair_count, within_b_median, within_b_pair_count, across_median,
            threshold_low, share_above_low, threshold_high, share_above_high.
        """
        return [
            {
                "group_a": pair.group_a,
                "group_b": pair.group_b,
                "item_count": pair.cosine_item_count,
                "within_a_median": pair.within_a_median,
                "within_a_pair_count": pair.within_a_pair_count,
                "within_b_median": pair.within_b_median,
                "within_b_pair_count": pair.within_b_pair_count,
                "across_median": pair.across_median,
                "threshold_low": self.threshold_low,
                "share_above_low": pair.share_above_low,
                "threshold_high": self.threshold_high,
                "share_above_high": pair.share_above_high,
            }
            for pair in self.pairs
        ]


def persona_views(
    answers: pd.DataFrame,
    *,
    personas: Sequence[str] = PERSONAS,
    threshold_low: float = 0.8,
    threshold_high: float = 0.9,
) -> PersonaViews:
    """Compare groups on style-persona ratings: mean absolute difference and cosine similarity.

    The seed retailer's three views, for each pair of groups (a, b), a < b:
      1. Mean absolute difference per persona: for every item with ratings of the persona from both
         groups, |mean rating of a - mean rating of b|; averaged over those items.
      2. Within-group cosine similarity: a rater's vector for an item is their ratings of
         `personas`, in that order (only raters who rated every persona of the item). For each
         group, the cosine of every pair of its raters on the same item, over the items of view 3;
         reported as the median over all pairs and the pair count.
      3. Across-group cosine similarity: per item where both groups have a complete vector, the
         cosine between the two groups' mean vectors; reported as the median over items and the
         shares of items strictly above `threshold_low` and `threshold_high`.
    Cosine similarity is u.v / (|u| |v|); with ratings >= 1 every vector is non-zero and has
    positive entries, so it lies in (0, 1] (values are clipped to 1.0 against rounding). It
    measures the profile's shape, not its level: (1, 1, ...) and (5, 5, ...) have cosine 1, which
    is why view 1 sits beside it.

    Args:
        answers: DataFrame with columns item, rater, group, attribute, value; one row per
            (item, rater, attribute). Rows whose attribute is not in `personas` are ignored, as are
            missing values (None/NaN, `CANT_TELL`). Values are numeric ratings (1-5).
        personas: the persona attributes, in vector order; default `PERSONAS`.
        threshold_low, threshold_high: cosine thresholds, 0 <= low <= high <= 1.

    Returns:
        PersonaViews; `.mad_rows()` and `.cosine_rows()` give table/CSV rows.

    Raises:
        ValueError: a required column is missing, personas is empty or repeats a name, the
            thresholds are out of order, a rating is not numeric or is below 1, or a rater rated
            the same persona of the same item twice.
    """
    _require_columns(answers, ANSWER_COLUMNS)
    personas = tuple(personas)
    if not personas or len(set(personas)) != len(personas):
        raise ValueError("personas must be non-empty and unique")
    if not 0.0 <= threshold_low <= threshold_high <= 1.0:
        raise ValueError("thresholds must satisfy 0 <= threshold_low <= threshold_high <= 1")
    frame = answers.loc[answers["attribute"].isin(personas), list(ANSWER_COLUMNS)]
    frame = _drop_missing(frame)
    frame = frame.assign(rating=_numeric(frame["value"]))
    if (frame["rating"] < 1).any():
        raise ValueError("persona ratings must be >= 1 (the scale is 1-5)")
    _reject_duplicates(frame, ("item", "rater", "attribute"), what="persona ratings")
    groups = _sorted_values(frame["group"].dropna().unique())

    # (item, group) x group mean rating, one frame per persona.
    group_means = {
        persona: frame[frame["attribute"] == persona].groupby(["item", "group"])["rating"].mean().unstack("group")
        for persona in personas
    }
    # (item, group, rater) x personas, complete vectors only; then {group: {item: (raters, personas)}}.
    vectors = (
        frame.pivot(index=["item", "group", "rater"], columns="attribute", values="rating")
        .reindex(columns=list(personas))
        .dropna()
    )
    matrices: dict[str, dict[Hashable, np.ndarray]] = {group: {} for group in groups}
    for (item, group), block in vectors.groupby(level=["item", "group"], sort=False):
        matrices[group][item] = block.to_numpy(dtype=np.float64)

    pairs = []
    for a, b in itertools.combinations(groups, 2):
        mean_abs_diff: dict[str, float | None] = {}
        mad_item_count: dict[str, int] = {}
        for persona in personas:
            means = group_means[persona]
            diffs = (means[a] - means[b]).abs().dropna() if a in means and b in means else pd.Series(dtype=float)
            mean_abs_diff[persona] = float(diffs.mean()) if len(diffs) else None
            mad_item_count[persona] = len(diffs)
        pairs.append(_cosine_view(a, b, matrices, threshold_low, threshold_high, mean_abs_diff, mad_item_count))
    return PersonaViews(personas, float(threshold_low), float(threshold_high), tuple(pairs))


def _cosine_view(
    a: str,
    b: str,
    matrices: dict[str, dict[Hashable, np.ndarray]],
    threshold_low: float,
    threshold_high: float,
    mean_abs_diff: dict[str, float | None],
    mad_item_count: dict[str, int],
) -> PersonaPairView:
    """Views 2 and 3 of `persona_views` for groups a and b, from {group: {item: (raters, personas)}}."""
    common = _sorted_values(set(matrices[a]) & set(matrices[b]))
    within: dict[str, list[float]] = {a: [], b: []}
    across: list[float] = []
    for item in common:
        for g in (a, b):
            within[g].extend(_cosine(u, v) for u, v in itertools.combinations(matrices[g][item], 2))
        across.append(_cosine(matrices[a][item].mean(axis=0), matrices[b][item].mean(axis=0)))
    across_array = np.asarray(across)
    return PersonaPairView(
        group_a=a,
        group_b=b,
        mean_abs_diff=mean_abs_diff,
        mad_item_count=mad_item_count,
        cosine_item_count=len(common),
        within_a_median=_median(within[a]),
        within_a_pair_count=len(within[a]),
        within_b_median=_median(within[b]),
        within_b_pair_count=len(within[b]),
        across_median=_median(across),
        share_above_low=float((across_array > threshold_low).mean()) if across else None,
        share_above_high=float((across_array > threshold_high).mean()) if across else None,
    )


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine similarity of two (P,) float64 vectors with positive entries (never zero vectors)."""
    return min(1.0, float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def rows_to_csv(rows: Iterable[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as CSV text for the report's download (RFC 4180: comma, CRLF, quoting by need).

    Args:
        rows: dicts such as `agreement_rows` or `PersonaViews.mad_rows()`/`.cosine_rows()` return.
        columns: the column order; default: every key in the order first seen (the first row's
            keys, then keys only later rows have), so the same rows always give the same text.

    Returns:
        The CSV text with a header line; "" when there are no rows and no `columns`. None and NaN
        become empty cells, floats are written with Python's shortest round-trip repr. A text cell
        starting with "=", "+", "-", "@", tab or CR gets a leading "'" so that spreadsheets do not
        run it as a formula (OWASP "CSV injection"); numbers are never changed.

    Raises:
        ValueError: a row has a key outside an explicit `columns`.
    """
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    else:
        columns = list(columns)
        for row in rows:
            extra = set(row) - set(columns)
            if extra:
                raise ValueError(f"row keys outside columns: {sorted(extra)}")
    if not columns:
        return ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(("=", "+", "-", "@", "\t", "\r")) else value
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"missing columns: {missing}")


def _reject_duplicates(frame: pd.DataFrame, keys: Sequence[str], *, what: str = "ratings") -> None:
    duplicated = frame.duplicated(list(keys))
    if duplicated.any():
        first = frame.loc[duplicated, list(keys)].iloc[0].tolist()
        raise ValueError(f"{what}: {tuple(keys)} must be unique; {first} occurs more than once")


def _clean_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """item, rater, value columns without missing values; checks one row per (item, rater)."""
    _require_columns(ratings, RATING_COLUMNS)
    ratings = ratings.loc[:, list(RATING_COLUMNS)]
    ratings = _drop_missing(ratings)
    _reject_duplicates(ratings, ("item", "rater"))
    return ratings


def _drop_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose value is not missing (`_is_missing`)."""
    # astype(bool): on an empty frame map() gives an object Series, which [] would take as column labels.
    return frame.loc[~frame["value"].map(_is_missing).astype(bool)]


def _is_missing(value: Any) -> bool:
    """None, NaN, `CANT_TELL` or a selection that is exactly {CANT_TELL}."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, str):
        return value == CANT_TELL
    if isinstance(value, (set, frozenset, tuple, list)):
        return len(value) > 0 and set(value) == {CANT_TELL}
    return False


def _as_selection(value: Any) -> frozenset[str]:
    """A multi-choice answer as a set of options; a plain string is a one-option selection."""
    return frozenset((value,)) if isinstance(value, str) else frozenset(value)


def _numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values, errors="raise").astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ratings must be numeric: {exc}") from exc


def _sorted_values(values: Iterable[Any]) -> list[Any]:
    """Sorted by (type name, value): deterministic, and never compares a str with an int."""
    return sorted(values, key=lambda v: (type(v).__name__, v))
