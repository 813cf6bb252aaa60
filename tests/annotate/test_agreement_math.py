"""Agreement maths (annotate.agreement) on small tables computed by hand. No database.

Notation in the comments (Krippendorff 2011): n = pairable values (values on items with 2+ ratings),
n_c = pairable values equal to c, m_u = ratings of item u. For nominal data
    alpha = 1 - (n - 1) * sum_u [mismatched ordered pairs in u / (m_u - 1)] / (n^2 - sum_c n_c^2),
and in general alpha = 1 - (n - 1) * sum_ck o_ck delta_ck / sum_ck n_c n_k delta_ck with the
coincidences o_ck = sum_u (ordered pairs (c, k) in u) / (m_u - 1).
Fleiss (1971): P_i = (sum_j n_ij^2 - k) / (k (k - 1)), P_e = sum_j p_j^2, kappa = (P - P_e) / (1 - P_e).
"""

import csv
import io
import math

import numpy as np
import pandas as pd
import pytest

from annotate import agreement
from annotate.agreement import (
    AGREEMENT_ROW_KEYS,
    FleissResult,
    agreement_rows,
    fleiss_kappa,
    krippendorff_alpha,
    persona_views,
    rows_to_csv,
)

MERCH = "merchandising"
CX = "customer_experience"


def _ratings(table: dict[str, dict[str, object]]) -> pd.DataFrame:
    """{rater: {item: value}} -> DataFrame item, rater, value (absent = not rated)."""
    rows = [(item, rater, value) for rater, values in table.items() for item, value in values.items()]
    return pd.DataFrame(rows, columns=["item", "rater", "value"])


def _answers(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item", "rater", "group", "attribute", "value"])


def _row(rows: list[dict], attribute: str, scope: str) -> dict:
    (found,) = [r for r in rows if r["attribute"] == attribute and r["scope"] == scope]
    return found


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units,
# missing data. None = not rated.
K2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def _k2011() -> pd.DataFrame:
    return _ratings({r: {f"u{j + 1}": v for j, v in enumerate(vs) if v is not None} for r, vs in K2011.items()})


# Three raters x four items, nominal:
#   i1: a a a   i2: a a b   i3: b b b   i4: a b c
THREE_BY_FOUR = {
    "r1": {"i1": "a", "i2": "a", "i3": "b", "i4": "a"},
    "r2": {"i1": "a", "i2": "a", "i3": "b", "i4": "b"},
    "r3": {"i1": "a", "i2": "b", "i3": "b", "i4": "c"},
}

# Two raters x three items, ordinal: u1 (1, 1), u2 (1, 2), u3 (3, 3).
SMALL_ORDINAL = {"r1": {"u1": 1, "u2": 1, "u3": 3}, "r2": {"u1": 1, "u2": 2, "u3": 3}}


class TestKrippendorffAlpha:
    def test_nominal_three_raters_four_items(self):
        # n = 12; n_a = 3+2+0+1 = 6, n_b = 0+1+3+1 = 5, n_c = 1; n^2 - sum n_c^2 = 144 - 62 = 82.
        # Mismatched ordered pairs / (m_u - 1): i2 {a:2, b:1}: 2*2*1/2 = 2; i4 all differ: 3*2/2 = 3; total 5.
        # alpha = 1 - 11 * 5 / 82 = 27/82 = 0.3293.
        assert krippendorff_alpha(_ratings(THREE_BY_FOUR), level="nominal") == pytest.approx(27 / 82)

    def test_krippendorff_2011_example_nominal_is_0_743(self):
        # u12 has one value (not pairable). Pairable: u1 (1,1,1), u2 (2,2,3,2), u3 (3,3,3,3), u4 (3,3,3,3),
        # u5 (2,2,2,2), u6 (1,2,3,4), u7 (4,4,4,4), u8 (1,1,2,1), u9 (2,2,2,2), u10 (5,5,5), u11 (1,1).
        # n = 3 + 8*4 + 3 + 2 = 40; n_1 = 3+1+3+2 = 9, n_2 = 3+4+1+1+4 = 13, n_3 = 1+4+4+1 = 10,
        # n_4 = 1+4 = 5, n_5 = 3; n^2 - sum n_c^2 = 1600 - (81+169+100+25+9) = 1216.
        # Mismatches / (m_u - 1): u2 2*3*1/3 = 2, u6 4*3/3 = 4, u8 2*3*1/3 = 2; total 8.
        # alpha = 1 - 39 * 8 / 1216 = 904/1216 = 113/152 = 0.7434 (the paper's 0.743).
        alpha = krippendorff_alpha(_k2011(), level="nominal")
        assert alpha == pytest.approx(113 / 152)
        assert round(alpha, 3) == 0.743

    def test_krippendorff_2011_example_ordinal_and_interval_match_the_paper(self):
        # Published in Krippendorff (2011), section C: ordinal 0.815, interval 0.849.
        ratings = _k2011()
        assert round(krippendorff_alpha(ratings, level="ordinal", value_domain=range(1, 6)), 3) == 0.815
        assert round(krippendorff_alpha(ratings, level="interval"), 3) == 0.849

    def test_missing_values_in_the_frame_are_dropped(self):
        # The same example with explicit None rows for the blanks: same 113/152.
        rows = [(f"u{j + 1}", r, v) for r, vs in K2011.items() for j, v in enumerate(vs)]
        ratings = pd.DataFrame(rows, columns=["item", "rater", "value"])
        assert krippendorff_alpha(ratings, level="nominal") == pytest.approx(113 / 152)

    def test_small_ordinal_case(self):
        # n = 6, n_1 = 3, n_2 = 1, n_3 = 2. Coincidences: o_11 = 2, o_12 = o_21 = 1, o_33 = 2 (m_u = 2).
        # Ordinal delta_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2:
        #   delta_12 = (4 - 2)^2 = 4, delta_13 = (6 - 2.5)^2 = 12.25, delta_23 = (3 - 1.5)^2 = 2.25.
        # sum o delta = 2 * 4 = 8; sum_{c!=k} n_c n_k delta = 2 * (3*1*4 + 3*2*12.25 + 1*2*2.25) = 180.
        # alpha = 1 - 5 * 8 / 180 = 7/9.
        assert krippendorff_alpha(_ratings(SMALL_ORDINAL), level="ordinal") == pytest.approx(7 / 9)

    def test_same_data_interval_and_nominal(self):
        # Interval delta = (c - k)^2: sum o delta = 2 * 1 = 2; 2 * (3*1*1 + 3*2*4 + 1*2*1) = 58;
        # alpha = 1 - 5 * 2 / 58 = 24/29. Nominal: 1 - 5 * 2 / (36 - 9 - 1 - 4) = 1 - 10/22 = 6/11.
        ratings = _ratings(SMALL_ORDINAL)
        assert krippendorff_alpha(ratings, level="interval") == pytest.approx(24 / 29)
        assert krippendorff_alpha(ratings, level="nominal") == pytest.approx(6 / 11)

    def test_ordinal_uses_ranks_interval_uses_distances(self):
        # Relabel 3 -> 5: ranks are unchanged, so ordinal stays 7/9. Interval: delta_12 = 1,
        # delta_15 = 16, delta_25 = 9; 2 * (3*1*1 + 3*2*16 + 1*2*9) = 234; alpha = 1 - 10/234 = 112/117.
        ratings = _ratings({"r1": {"u1": 1, "u2": 1, "u3": 5}, "r2": {"u1": 1, "u2": 2, "u3": 5}})
        assert krippendorff_alpha(ratings, level="ordinal", value_domain=range(1, 6)) == pytest.approx(7 / 9)
        assert krippendorff_alpha(ratings, level="interval", value_domain=range(1, 6)) == pytest.approx(112 / 117)

    def test_unused_categories_in_the_ordinal_domain_do_not_change_alpha(self):
        # n_4 = n_5 = 0 adds nothing to any delta between used values: still 7/9.
        ratings = _ratings(SMALL_ORDINAL)
        assert krippendorff_alpha(ratings, level="ordinal", value_domain=[1, 2, 3, 4, 5]) == pytest.approx(7 / 9)

    def test_perfect_agreement_is_one(self):
        ratings = _ratings({"r1": {"u1": "a", "u2": "b"}, "r2": {"u1": "a", "u2": "b"}})
        assert krippendorff_alpha(ratings, level="nominal") == pytest.approx(1.0)

    def test_no_item_with_two_ratings_is_undefined(self):
        ratings = _ratings({"r1": {"u1": "a"}, "r2": {"u2": "b"}})
        assert krippendorff_alpha(ratings, level="nominal") is None

    def test_empty_frame_is_undefined(self):
        assert krippendorff_alpha(pd.DataFrame(columns=["item", "rater", "value"]), level="ordinal") is None

    def test_a_single_value_is_undefined_nominal(self):
        ratings = _ratings({"r1": {"u1": "a", "u2": "a"}, "r2": {"u1": "a", "u2": "a"}})
        assert krippendorff_alpha(ratings, level="nominal") is None

    def test_a_single_value_with_a_wider_ordinal_domain_is_undefined_not_nan(self):
        # The library returns NaN (0/0) here rather than raising, because the domain has 5 values.
        ratings = _ratings({"r1": {"u1": 3, "u2": 3}, "r2": {"u1": 3, "u2": 3}})
        assert krippendorff_alpha(ratings, level="ordinal", value_domain=range(1, 6)) is None

    def test_a_second_value_only_on_an_unpairable_item_is_still_undefined(self):
        # u2 has one rating, so the pairable values are all "a": D_e = 0.
        ratings = _ratings({"r1": {"u1": "a", "u2": "b"}, "r2": {"u1": "a"}})
        assert krippendorff_alpha(ratings, level="nominal") is None

    def test_value_outside_the_domain_raises(self):
        with pytest.raises(ValueError, match="outside value_domain"):
            krippendorff_alpha(_ratings(SMALL_ORDINAL), level="ordinal", value_domain=[1, 2])

    def test_duplicate_item_rater_raises(self):
        ratings = pd.DataFrame(
            [("u1", "r1", "a"), ("u1", "r1", "b"), ("u1", "r2", "a")], columns=["item", "rater", "value"]
        )
        with pytest.raises(ValueError, match="unique"):
            krippendorff_alpha(ratings, level="nominal")

    def test_unknown_level_raises(self):
        with pytest.raises(ValueError, match="level"):
            krippendorff_alpha(_ratings(SMALL_ORDINAL), level="ratio")


class TestFleissKappa:
    def test_three_raters_four_items_by_hand(self):
        # P_i: i1 (9-3)/6 = 1, i2 (4+1-3)/6 = 1/3, i3 1, i4 (1+1+1-3)/6 = 0; P = (7/3)/4 = 7/12.
        # p_a = 6/12, p_b = 5/12, p_c = 1/12; P_e = (36 + 25 + 1)/144 = 31/72.
        # kappa = (42/72 - 31/72) / (41/72) = 11/41 = 0.2683.
        result = fleiss_kappa(_ratings(THREE_BY_FOUR))
        assert result.kappa == pytest.approx(11 / 41)
        assert (result.item_count, result.raters_per_item) == (4, 3)

    def test_uses_the_most_common_rating_count(self):
        # Counts: p 2, q 2, s 3 -> k = 2, items p (a, b) and q (a, a).
        # P_p = 0, P_q = 1, P = 1/2; p_a = 3/4, p_b = 1/4, P_e = 10/16; kappa = (1/2 - 5/8)/(3/8) = -1/3.
        ratings = _ratings(
            {"r1": {"p": "a", "q": "a", "s": "a"}, "r2": {"p": "b", "q": "a", "s": "a"}, "r3": {"s": "b"}}
        )
        assert fleiss_kappa(ratings) == pytest.approx(FleissResult(-1 / 3, 2, 2))

    def test_a_tie_between_counts_goes_to_the_larger(self):
        # Counts: p 2, q 2, s 3, t 3 -> tie, k = 3: s (a, a, b), t (b, b, b).
        # P_s = (4+1-3)/6 = 1/3, P_t = 1, P = 2/3; p_a = 2/6, p_b = 4/6, P_e = 5/9; kappa = (1/9)/(4/9) = 1/4.
        # (With k = 2, p and q are both unanimous "a": a single category, kappa None.)
        ratings = _ratings(
            {
                "r1": {"p": "a", "q": "a", "s": "a", "t": "b"},
                "r2": {"p": "a", "q": "a", "s": "a", "t": "b"},
                "r3": {"s": "b", "t": "b"},
            }
        )
        assert fleiss_kappa(ratings) == pytest.approx(FleissResult(0.25, 2, 3))

    def test_a_single_category_is_undefined(self):
        ratings = _ratings({"r1": {"u1": "a", "u2": "a"}, "r2": {"u1": "a", "u2": "a"}})
        assert fleiss_kappa(ratings) == FleissResult(None, 2, 2)

    def test_one_item_is_undefined(self):
        ratings = _ratings({"r1": {"u1": "a"}, "r2": {"u1": "b"}})
        assert fleiss_kappa(ratings) == FleissResult(None, 1, 2)

    def test_no_item_with_two_ratings(self):
        ratings = _ratings({"r1": {"u1": "a"}, "r2": {"u2": "b"}})
        assert fleiss_kappa(ratings) == FleissResult(None, 0, None)

    def test_the_table_formula_matches_statsmodels(self):
        # The report computes Fleiss' kappa itself so that a web worker never imports statsmodels.
        from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

        rng = np.random.default_rng(7)
        for k, categories in ((2, 2), (3, 4), (5, 3)):
            table = rng.multinomial(k, rng.dirichlet(np.ones(categories)), size=40)
            assert agreement.fleiss_kappa_table(table) == pytest.approx(statsmodels_fleiss(table, method="fleiss"))

    def test_the_table_formula_refuses_uneven_rows_and_one_category(self):
        with pytest.raises(ValueError, match="same number"):
            agreement.fleiss_kappa_table(np.array([[2, 0], [1, 2]]))
        with pytest.raises(ValueError, match="one category"):
            agreement.fleiss_kappa_table(np.array([[3], [3]]))


def _colour_answers() -> pd.DataFrame:
    # colour (single):  i1: m1 red,  m2 red,  c1 red
    #                   i2: m1 blue, m2 blue, c1 red
    #                   i3: m1 red,  m2 blue            (merchandising only)
    # fit (single), merchandising only: i1: m1 slim, m2 slim.
    return _answers(
        [
            ("i1", "m1", MERCH, "colour", "red"),
            ("i1", "m2", MERCH, "colour", "red"),
            ("i1", "c1", CX, "colour", "red"),
            ("i2", "m1", MERCH, "colour", "blue"),
            ("i2", "m2", MERCH, "colour", "blue"),
            ("i2", "c1", CX, "colour", "red"),
            ("i3", "m1", MERCH, "colour", "red"),
            ("i3", "m2", MERCH, "colour", "blue"),
            ("i1", "m1", MERCH, "fit", "slim"),
            ("i1", "m2", MERCH, "fit", "slim"),
        ]
    )


class TestAgreementRows:
    def test_scopes_and_their_order(self):
        rows = agreement_rows(_colour_answers(), attributes={"colour": "single", "fit": "single"})
        scopes = ["all", f"group:{CX}", f"group:{MERCH}", f"pair:{CX}|{MERCH}"]
        assert [(r["attribute"], r["scope"]) for r in rows] == [("colour", s) for s in scopes] + [
            ("fit", s) for s in scopes
        ]
        assert all(tuple(r) == AGREEMENT_ROW_KEYS for r in rows)

    def test_all_scope(self):
        # n = 8; n_red = 5, n_blue = 3; mismatches: i2 2*2*1/2 = 2, i3 2*1*1/1 = 2; 64 - 25 - 9 = 30.
        # alpha = 1 - 7 * 4 / 30 = 1/15.
        # Fleiss: counts 3, 3, 2 -> k = 3 on i1 [red 3], i2 [red 1, blue 2]: P = (1 + 1/3)/2 = 2/3;
        # p_red = 4/6, p_blue = 2/6, P_e = 5/9; kappa = (1/9)/(4/9) = 1/4.
        row = _row(agreement_rows(_colour_answers(), attributes={"colour": "single"}), "colour", "all")
        assert row["alpha"] == pytest.approx(1 / 15)
        assert row["fleiss_kappa"] == pytest.approx(0.25)
        assert (row["item_count"], row["answer_count"], row["fleiss_item_count"], row["fleiss_raters_per_item"]) == (
            3,
            8,
            2,
            3,
        )
        assert (row["kind"], row["level"]) == ("single", "nominal")

    def test_group_scope_uses_only_that_groups_raters(self):
        # merchandising: i1 red red, i2 blue blue, i3 red blue; n = 6, n_red = n_blue = 3; mismatches i3: 2.
        # alpha = 1 - 5 * 2 / (36 - 18) = 4/9. Fleiss k = 2, 3 items: P = (1 + 1 + 0)/3 = 2/3, P_e = 1/2,
        # kappa = (1/6)/(1/2) = 1/3.
        rows = agreement_rows(_colour_answers(), attributes={"colour": "single"})
        merch = _row(rows, "colour", f"group:{MERCH}")
        assert merch["alpha"] == pytest.approx(4 / 9)
        assert merch["fleiss_kappa"] == pytest.approx(1 / 3)
        assert (merch["item_count"], merch["answer_count"]) == (3, 6)
        # customer_experience has one rater: nothing pairable, undefined rather than an error.
        cx = _row(rows, "colour", f"group:{CX}")
        assert (cx["alpha"], cx["fleiss_kappa"], cx["item_count"], cx["answer_count"]) == (None, None, 0, 2)

    def test_pair_scope_uses_only_items_both_groups_rated(self):
        # i3 (merchandising only) is left out: i1 red red red, i2 blue blue red; n = 6, n_red = 4,
        # n_blue = 2; mismatches i2: 2*2*1/2 = 2; alpha = 1 - 5 * 2 / (36 - 16 - 4) = 3/8.
        # Fleiss on the same two items: kappa = 1/4 (see test_all_scope).
        row = _row(agreement_rows(_colour_answers(), attributes={"colour": "single"}), "colour", f"pair:{CX}|{MERCH}")
        assert row["alpha"] == pytest.approx(3 / 8)
        assert row["fleiss_kappa"] == pytest.approx(0.25)
        assert (row["item_count"], row["answer_count"]) == (2, 6)

    def test_pair_scope_without_common_items_is_empty_not_an_error(self):
        rows = agreement_rows(_colour_answers(), attributes={"fit": "single"})
        pair = _row(rows, "fit", f"pair:{CX}|{MERCH}")
        assert (pair["answer_count"], pair["item_count"], pair["alpha"], pair["fleiss_kappa"]) == (0, 0, None, None)
        # Everyone said "slim": a single value, alpha undefined.
        assert _row(rows, "fit", "all")["alpha"] is None

    def test_cant_tell_is_missing_not_a_category(self):
        # i1: a, a, cant_tell; i2: b, b, cant_tell; i3: a, b. Without cant_tell: n = 6, n_a = n_b = 3,
        # mismatches i3: 2; alpha = 1 - 5 * 2 / 18 = 4/9. (As a category it would be n = 8 and
        # 1 - 7 * (2*2*1/2 * 2 + 2) / (64 - 9 - 9 - 4) = 1 - 42/42 = 0.)
        answers = _answers(
            [
                ("i1", "r1", MERCH, "neckline", "a"),
                ("i1", "r2", MERCH, "neckline", "a"),
                ("i1", "r3", MERCH, "neckline", "cant_tell"),
                ("i2", "r1", MERCH, "neckline", "b"),
                ("i2", "r2", MERCH, "neckline", "b"),
                ("i2", "r3", MERCH, "neckline", "cant_tell"),
                ("i3", "r1", MERCH, "neckline", "a"),
                ("i3", "r2", MERCH, "neckline", "b"),
            ]
        )
        row = _row(agreement_rows(answers, attributes={"neckline": "single"}), "neckline", "all")
        assert row["alpha"] == pytest.approx(4 / 9)
        assert (row["answer_count"], row["item_count"]) == (6, 3)
        # Fleiss: k = 2 on all three items, P = (1 + 1 + 0)/3 = 2/3, P_e = 1/2, kappa = 1/3.
        assert row["fleiss_kappa"] == pytest.approx(1 / 3)

    def test_multi_choice_gives_one_binary_row_per_option(self):
        # i1: r1 {work, party}, r2 {work}; i2: r1 {party}, r2 {party}; i3: r1 {}, r2 {}.
        # r3 answered another attribute only: not a "not selected" for occasion.
        # party: i1 T F, i2 T T, i3 F F; n = 6, n_T = n_F = 3, mismatches i1: 2; alpha = 1 - 10/18 = 4/9.
        #   Fleiss k = 2: P = (0 + 1 + 1)/3 = 2/3, P_e = 1/2, kappa = 1/3.
        # work: i1 T T, i2 F F, i3 F F: perfect, two values present; alpha = 1, kappa = 1.
        answers = _answers(
            [
                ("i1", "r1", MERCH, "occasion", frozenset({"work", "party"})),
                ("i1", "r2", MERCH, "occasion", ("work",)),
                ("i2", "r1", MERCH, "occasion", ("party",)),
                ("i2", "r2", MERCH, "occasion", frozenset({"party"})),
                ("i3", "r1", MERCH, "occasion", ()),
                ("i3", "r2", MERCH, "occasion", frozenset()),
                ("i1", "r3", MERCH, "colour", "red"),
            ]
        )
        rows = [r for r in agreement_rows(answers, attributes={"occasion": "multi"}) if r["scope"] == "all"]
        assert [r["attribute"] for r in rows] == ["occasion:party", "occasion:work"]
        party, work = rows
        assert party["alpha"] == pytest.approx(4 / 9)
        assert party["fleiss_kappa"] == pytest.approx(1 / 3)
        assert work["alpha"] == pytest.approx(1.0)
        assert work["fleiss_kappa"] == pytest.approx(1.0)
        assert all(
            (r["kind"], r["level"], r["answer_count"], r["item_count"]) == ("multi", "nominal", 6, 3) for r in rows
        )

    def test_ordinal_attribute(self):
        answers = _answers(
            [(item, rater, MERCH, "formality", v) for rater, vs in SMALL_ORDINAL.items() for item, v in vs.items()]
        )
        row = _row(agreement_rows(answers, attributes={"formality": "ordinal"}), "formality", "all")
        assert row["level"] == "ordinal"
        assert row["alpha"] == pytest.approx(7 / 9)  # see TestKrippendorffAlpha.test_small_ordinal_case
        assert (row["fleiss_kappa"], row["fleiss_item_count"], row["fleiss_raters_per_item"]) == (None, None, None)

    def test_unknown_kind_raises(self):
        with pytest.raises(ValueError, match="kind"):
            agreement_rows(_colour_answers(), attributes={"colour": "free_text"})

    def test_ordinal_value_outside_the_scale_raises(self):
        answers = _answers([("i1", "r1", MERCH, "formality", 7), ("i1", "r2", MERCH, "formality", 6)])
        with pytest.raises(ValueError, match="outside value_domain"):
            agreement_rows(answers, attributes={"formality": "ordinal"})


def _persona_answers(extra: list[tuple] = ()) -> pd.DataFrame:
    # Personas (minimalist, romantic):
    #   i1: m1 (3, 4), m2 (4, 3)   c1 (1, 2), c2 (2, 1)
    #   i2: m1 (1, 1), m2 (1, 1)   c1 (1, 5), c2 (1, 5)
    vectors = {
        ("i1", "m1", MERCH): (3, 4),
        ("i1", "m2", MERCH): (4, 3),
        ("i1", "c1", CX): (1, 2),
        ("i1", "c2", CX): (2, 1),
        ("i2", "m1", MERCH): (1, 1),
        ("i2", "m2", MERCH): (1, 1),
        ("i2", "c1", CX): (1, 5),
        ("i2", "c2", CX): (1, 5),
    }
    rows = [
        (item, rater, group, persona, rating)
        for (item, rater, group), ratings in vectors.items()
        for persona, rating in zip(("minimalist", "romantic"), ratings, strict=True)
    ]
    return _answers(rows + list(extra))


PERSONAS2 = ("minimalist", "romantic")


class TestPersonaViews:
    def test_mean_absolute_difference_by_hand(self):
        # Group means: i1 merch (3.5, 3.5), cx (1.5, 1.5); i2 merch (1, 1), cx (1, 5).
        # minimalist: (|3.5 - 1.5| + |1 - 1|)/2 = 1.0; romantic: (|3.5 - 1.5| + |1 - 5|)/2 = 3.0.
        (pair,) = persona_views(_persona_answers(), personas=PERSONAS2).pairs
        assert (pair.group_a, pair.group_b) == (CX, MERCH)
        assert pair.mean_abs_diff == pytest.approx({"minimalist": 1.0, "romantic": 3.0})
        assert pair.mad_item_count == {"minimalist": 2, "romantic": 2}

    def test_cosine_similarity_by_hand(self):
        # Within merchandising: i1 (3,4).(4,3) / (5*5) = 24/25 = 0.96; i2 (1,1) vs (1,1) = 1; median 0.98.
        # Within customer_experience: i1 (1,2).(2,1) / (sqrt5*sqrt5) = 4/5; i2 identical = 1; median 0.9.
        # Across (group means): i1 (1.5,1.5) vs (3.5,3.5) = 1; i2 (1,5) vs (1,1) = 6/(sqrt26*sqrt2) = 3/sqrt13
        # = 0.8321; median (1 + 3/sqrt13)/2 = 0.9160. Above 0.8: 2 of 2; above 0.9: 1 of 2.
        (pair,) = persona_views(_persona_answers(), personas=PERSONAS2).pairs
        assert pair.cosine_item_count == 2
        assert pair.within_a_median == pytest.approx(0.9)  # group_a = customer_experience
        assert pair.within_b_median == pytest.approx(0.98)
        assert (pair.within_a_pair_count, pair.within_b_pair_count) == (2, 2)
        assert pair.across_median == pytest.approx((1 + 3 / math.sqrt(13)) / 2)
        assert (pair.share_above_low, pair.share_above_high) == (1.0, 0.5)

    def test_thresholds_are_parameters(self):
        # 3/sqrt13 = 0.832 is above 0.83 but not above 0.84.
        views = persona_views(_persona_answers(), personas=PERSONAS2, threshold_low=0.83, threshold_high=0.84)
        (pair,) = views.pairs
        assert (pair.share_above_low, pair.share_above_high) == (1.0, 0.5)
        assert (views.threshold_low, views.threshold_high) == (0.83, 0.84)

    def test_incomplete_vectors_and_one_group_items(self):
        # m3 rates only minimalist on i1 (5): in the mean difference, not in the cosines.
        #   minimalist i1: merch mean (3+4+5)/3 = 4, |4 - 1.5| = 2.5; with i2's 0: (2.5 + 0)/2 = 1.25.
        # i3 is rated by merchandising only: in neither view.
        extra = [
            ("i1", "m3", MERCH, "minimalist", 5),
            ("i3", "m1", MERCH, "minimalist", 2),
            ("i3", "m1", MERCH, "romantic", 2),
            ("i3", "m2", MERCH, "minimalist", 5),
            ("i3", "m2", MERCH, "romantic", 1),
        ]
        (pair,) = persona_views(_persona_answers(extra), personas=PERSONAS2).pairs
        assert pair.mean_abs_diff == pytest.approx({"minimalist": 1.25, "romantic": 3.0})
        assert pair.mad_item_count == {"minimalist": 2, "romantic": 2}
        assert (pair.cosine_item_count, pair.within_b_pair_count) == (2, 2)
        assert pair.within_b_median == pytest.approx(0.98)

    def test_other_attributes_and_cant_tell_are_ignored(self):
        extra = [("i1", "m1", MERCH, "colour", "red"), ("i2", "c1", CX, "neckline", "cant_tell")]
        (pair,) = persona_views(_persona_answers(extra), personas=PERSONAS2).pairs
        assert pair.mean_abs_diff == pytest.approx({"minimalist": 1.0, "romantic": 3.0})

    def test_rows_for_tables_and_csv(self):
        views = persona_views(_persona_answers(), personas=PERSONAS2)
        assert views.mad_rows() == [
            {"group_a": CX, "group_b": MERCH, "persona": "minimalist", "item_count": 2, "mean_abs_diff": 1.0},
            {"group_a": CX, "group_b": MERCH, "persona": "romantic", "item_count": 2, "mean_abs_diff": 3.0},
        ]
        (cosine,) = views.cosine_rows()
        assert cosine["within_b_median"] == pytest.approx(0.98)
        assert (cosine["threshold_high"], cosine["share_above_high"]) == (0.9, 0.5)

    def test_one_group_gives_no_pairs(self):
        answers = _persona_answers()
        assert persona_views(answers[answers["group"] == MERCH], personas=PERSONAS2).pairs == ()

    def test_a_persona_without_common_items_is_none(self):
        # Only merchandising rated "edgy": no mean difference for it, the others are unaffected.
        extra = [("i1", "m1", MERCH, "edgy", 3)]
        (pair,) = persona_views(_persona_answers(extra), personas=(*PERSONAS2, "edgy")).pairs
        assert pair.mean_abs_diff["edgy"] is None and pair.mad_item_count["edgy"] == 0
        # No rater rated all three personas: no complete vectors, so no cosines.
        assert (pair.cosine_item_count, pair.across_median, pair.share_above_low) == (0, None, None)
        assert pair.mean_abs_diff["romantic"] == pytest.approx(3.0)

    def test_default_personas_are_the_eight_style_personas(self):
        assert agreement.PERSONAS == (
            "minimalist",
            "romantic",
            "glamorous",
            "sexy",
            "edgy",
            "boho",
            "preppy",
            "casual",
        )

    def test_a_rating_below_one_raises(self):
        with pytest.raises(ValueError, match=">= 1"):
            persona_views(_persona_answers([("i1", "c3", CX, "minimalist", 0)]), personas=PERSONAS2)

    def test_thresholds_out_of_order_raise(self):
        with pytest.raises(ValueError, match="threshold"):
            persona_views(_persona_answers(), personas=PERSONAS2, threshold_low=0.9, threshold_high=0.8)


class TestRowsToCsv:
    def test_columns_in_first_seen_order_and_empty_cells_for_none(self):
        rows = [{"attribute": "colour", "alpha": 0.375, "kappa": None}, {"attribute": "fit", "alpha": None, "n": 3}]
        assert rows_to_csv(rows) == "attribute,alpha,kappa,n\r\ncolour,0.375,,\r\nfit,,,3\r\n"

    def test_explicit_columns_and_unknown_keys(self):
        assert rows_to_csv([{"b": 1, "a": 2}], columns=["a", "b"]) == "a,b\r\n2,1\r\n"
        with pytest.raises(ValueError, match="outside columns"):
            rows_to_csv([{"a": 1, "z": 2}], columns=["a"])

    def test_quoting_and_formula_like_text(self):
        rows = [{"scope": "pair:a|b", "option": "=HYPERLINK()", "alpha": -0.25, "note": "x, y", "nan": np.nan}]
        assert rows_to_csv(rows) == 'scope,option,alpha,note,nan\r\npair:a|b,\'=HYPERLINK(),-0.25,"x, y",\r\n'

    def test_no_rows(self):
        assert rows_to_csv([]) == ""
        assert rows_to_csv([], columns=["a"]) == "a\r\n"

    def test_agreement_rows_header(self):
        csv_text = rows_to_csv(agreement_rows(_colour_answers(), attributes={"colour": "single"}))
        header, first, *_ = csv.reader(io.StringIO(csv_text))
        assert header == list(AGREEMENT_ROW_KEYS)
        assert first[:6] == ["colour", "single", "all", "nominal", "3", "8"]
        assert float(first[6]) == pytest.approx(1 / 15)  # alpha; see TestAgreementRows
        assert float(first[7]) <= 1 / 15 <= float(first[8])  # its bootstrap interval
        assert float(first[9]) == pytest.approx(0.25)  # Fleiss' kappa
        assert first[10:] == ["2", "3"]


class TestAlphaInterval:
    """The bootstrap interval of alpha (annotate.agreement.alpha_interval), issue 16: the agreement
    report showed alpha without its uncertainty."""

    @staticmethod
    def _random_ratings(rng, items: int, raters: int, values, p_agree: float) -> pd.DataFrame:
        rows = []
        for item in range(items):
            truth = values[rng.integers(len(values))]
            for rater in range(raters):
                if rng.random() < 0.15:
                    continue  # missing
                value = truth if rng.random() < p_agree else values[rng.integers(len(values))]
                rows.append((f"i{item}", f"r{rater}", value))
        return pd.DataFrame(rows, columns=["item", "rater", "value"])

    @pytest.mark.parametrize("level, values", [("nominal", ["a", "b", "c"]), ("ordinal", [1, 2, 3, 4, 5])])
    def test_the_coincidence_formula_gives_the_librarys_alpha(self, level, values):
        rng = np.random.default_rng(3)
        ratings = self._random_ratings(rng, 60, 4, values, 0.7)
        domain = None if level == "nominal" else values
        # One "resample" that weighs every item once is the data itself.
        counts = ratings.groupby(["item", "value"]).size().unstack(fill_value=0)
        counts = counts[counts.sum(axis=1) >= 2].reindex(columns=sorted(values), fill_value=0).to_numpy(float)
        m = counts.sum(axis=1)
        k = counts.shape[1]
        per_item = (counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(k)) / (m - 1)[:, None, None]
        scale = np.arange(k, dtype=float) if level == "nominal" else np.asarray(values, float)
        (ours,) = agreement._alpha_from_coincidences(per_item.sum(axis=0)[None], level=level, scale=scale)
        assert ours == pytest.approx(krippendorff_alpha(ratings, level=level, value_domain=domain))

    def test_the_interval_holds_the_estimate_and_narrows_with_more_items(self):
        rng = np.random.default_rng(5)
        small = self._random_ratings(rng, 40, 3, ["a", "b", "c"], 0.7)
        large = self._random_ratings(rng, 800, 3, ["a", "b", "c"], 0.7)
        for ratings in (small, large):
            low, high = agreement.alpha_interval(ratings, level="nominal")
            assert low < krippendorff_alpha(ratings, level="nominal") < high
        (s_low, s_high), (l_low, l_high) = (agreement.alpha_interval(r, level="nominal") for r in (small, large))
        assert l_high - l_low < (s_high - s_low) / 2
        assert agreement.alpha_interval(small, level="nominal") == (s_low, s_high)  # seeded: the same every time

    def test_undefined_alpha_has_no_interval(self):
        one_value = _ratings({"r1": {"u1": "a", "u2": "a"}, "r2": {"u1": "a", "u2": "a"}})
        one_item = _ratings({"r1": {"u1": "a"}, "r2": {"u1": "b"}})
        assert agreement.alpha_interval(one_value, level="nominal") == (None, None)
        assert agreement.alpha_interval(one_item, level="nominal") == (None, None)
