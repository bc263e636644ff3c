"""EvalResult: per answer type, accuracy next to the question-only prior, and how often the model gives the prior's
answer (a model that ignores the image on a type gives it every time, however well it scores)."""

import pytest

from laco.evaluate import EvalResult


def _result(rows):
    predictions = [{"id": str(i), "question": q, "reference": r, "prediction": p, "question_prior": prior}
                   for i, (q, r, p, prior) in enumerate(rows)]  # fmt: skip
    correct = sum(r == p for _, r, p, _ in rows)
    return EvalResult(accuracy=correct / len(rows), correct=correct, total=len(rows), majority_answer="yes",
                      majority_accuracy=0.5, question_prior_accuracy=None, seconds=1.0, predictions=predictions)  # fmt: skip


def test_by_group_reports_accuracy_the_prior_and_how_often_the_prior_is_answered():
    result = _result([
        ("is there a red shape?", "no", "no", "no"),      # right, as the prior
        ("is there a blue shape?", "yes", "no", "no"),    # wrong, as the prior
        ("is there a circle?", "yes", "yes", "no"),       # right, against the prior: read from the image
        ("what is the shape?", "circle", "Circle.", "triangle"),
    ])  # fmt: skip
    table = result.by_group({"yes/no": ["yes", "no"], "shape": ["circle", "triangle"], "colour": ["red"]})
    assert table["yes/no"] == pytest.approx(
        {"accuracy": 2 / 3, "question_prior": 1 / 3, "n": 3, "same_as_prior": 2 / 3}
    )
    assert table["shape"]["accuracy"] == 1.0 and table["shape"]["same_as_prior"] == 0.0
    assert "colour" not in table  # no question of that type


def test_a_saved_result_reads_back_with_its_predictions(tmp_path):
    result = _result([("is there a red shape?", "no", "yes", "no")])
    result.to_json(tmp_path / "eval.json")
    again = EvalResult.from_json(tmp_path / "eval.json")
    assert again == result and again.by_group({"yes/no": ["yes", "no"]})["yes/no"]["same_as_prior"] == 0.0
