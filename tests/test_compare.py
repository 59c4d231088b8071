"""The exact McNemar test on planted per-example flags with known answers."""

import math

import pytest
from scipy.stats import binomtest

from dashboards.compare import binomial_two_sided, compare_reports, mcnemar, per_example


def planted(both: int, only_a: int, only_b: int, neither: int):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_mcnemar_known_answer():
    # 10 points robust only under A, 2 only under B: p = 2·(C(12,0)+C(12,1)+C(12,2))/2¹²
    a, b = planted(50, 10, 2, 38)
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b, result.n) == (10, 2, 100)
    assert result.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert result.significant(0.05) and not result.significant(0.01)
    assert result.difference == pytest.approx(0.08)
    assert result.p_value == pytest.approx(binomtest(10, 12, 0.5).pvalue)


def test_same_accuracy_different_points_is_not_significant():
    a, b = planted(40, 5, 5, 50)
    result = mcnemar(a, b)
    assert result.p_value == 1.0 and result.difference == 0
    assert mcnemar([True, False], [True, False]).p_value == 1.0  # no discordant pair


def test_pairing_beats_comparing_percentages():
    # 60% vs 52% on 100 points: 8 discordant, all one way → p = 2/2⁸; two independent
    # proportions would not be distinguishable at this n
    a, b = planted(52, 8, 0, 40)
    result = mcnemar(a, b)
    assert result.p_value == pytest.approx(2 / 256)
    pooled = 0.56
    z = 0.08 / math.sqrt(pooled * (1 - pooled) * 2 / 100)
    assert z < 1.96  # an unpaired two-proportion z-test would call it a tie
    assert "significant" in result.sentence("EMR", "AT")


@pytest.mark.parametrize("k,n", [(0, 1), (3, 7), (15, 40), (20, 20)])
def test_binomial_matches_scipy(k, n):
    assert binomial_two_sided(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue)


def test_reports_are_compared_on_the_worst_case_and_must_be_paired():
    def report(clean, pgd, square, n=4, epsilon=0.1):
        return {"n": n, "epsilon": epsilon, "norm": "linf", "clean_correct": clean,
                "attacks": {"pgd": {"robust": pgd}, "square": {"robust": square}}}

    a = report([1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0])
    b = report([1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1])
    assert per_example(a) == [True, False, False, False]
    assert per_example(a, "pgd") == [True, True, False, False]
    result = compare_reports(a, b)
    assert per_example(b) == [False, True, True, True]
    assert (result.only_a, result.only_b) == (1, 3)
    with pytest.raises(ValueError, match="epsilon"):
        compare_reports(a, report([1] * 4, [1] * 4, [1] * 4, epsilon=0.2))
    with pytest.raises(KeyError, match="pgd, square"):
        per_example(a, "fab")
    with pytest.raises(ValueError, match="paired"):
        mcnemar([True], [True, False])
