"""The exact McNemar test on planted per-example flags with known answers."""

import json
import math

import pytest
from scipy.stats import binomtest

from attacks.schema import Accuracy, AttackRecord, EvaluationRecord, Source
from dashboards.compare import (
    binomial_two_sided,
    compare_reports,
    load_report,
    mcnemar,
    per_example,
)


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


def record(clean, pgd, square, n=4, epsilon=0.1, checksum="points") -> EvaluationRecord:
    attacks = tuple(AttackRecord(label, label, column, True, {}, tuple(map(bool, robust)),
                                 Accuracy.of(robust), 1.0)
                    for label, column, robust in (("pgd-100-ce", "pgd100_ce", pgd),
                                                  ("square", "square", square)))
    return EvaluationRecord(n=n, epsilon=epsilon, norm="linf", eval_seed=0,
                            clean_correct=tuple(map(bool, clean)), attacks=attacks,
                            source=Source(data_checksum=checksum))


def test_records_are_compared_on_the_worst_case_and_must_be_paired():
    a = record([1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0])
    b = record([1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1])
    assert per_example(a) == [True, False, False, False]
    assert per_example(a, "pgd100_ce") == per_example(a, "pgd-100-ce") == [True, True, False,
                                                                           False]
    assert per_example(a, "clean") == [True, True, True, False]
    result = compare_reports(a, b)
    assert per_example(b) == [False, True, True, True]
    assert (result.only_a, result.only_b) == (1, 3)
    assert compare_reports(a, b, "square") == mcnemar([1, 0, 1, 0], [0, 1, 1, 1])
    with pytest.raises(ValueError, match="epsilon"):
        compare_reports(a, record([1] * 4, [1] * 4, [1] * 4, epsilon=0.2))
    with pytest.raises(ValueError, match="different points"):
        compare_reports(a, record([1] * 4, [1] * 4, [1] * 4, checksum="other"))
    with pytest.raises(KeyError, match="pgd100_ce, square"):
        per_example(a, "fab")
    with pytest.raises(ValueError, match="paired"):
        mcnemar([True], [True, False])


def test_report_documents_are_read_as_records(tmp_path):
    """A ``report.json`` of any readable version: this one's, and a version-less one."""
    def version_1(clean, pgd, square, n=4, epsilon=0.1):
        return {"n": n, "epsilon": epsilon, "norm": "linf", "clean_correct": clean,
                "attacks": {"pgd": {"robust": pgd}, "square": {"robust": square}}}

    a = version_1([1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0])
    b = record([1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1])
    assert per_example(a) == [True, False, False, False]
    assert per_example(a, "pgd") == [True, True, False, False]
    assert (compare_reports(a, b.to_dict()).only_a, compare_reports(a, b).only_b) == (1, 3)
    with pytest.raises(ValueError, match="epsilon"):
        compare_reports(a, version_1([1] * 4, [1] * 4, [1] * 4, epsilon=0.2))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(b.to_dict()))
    assert load_report(path) == b
