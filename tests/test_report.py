"""The report's plots: what every task has, per-bucket curves only for numeric buckets, integer ticks."""

import pytest

from flywheel.report import figure, html_report


def _report(buckets_per_round: list[dict]) -> dict:
    rounds = []
    for index, buckets in enumerate(buckets_per_round):
        accuracy = sum(buckets.values()) / len(buckets)
        rounds.append({
            "round": index, "bucket": index + 2, "champion": None, "candidate": None,
            "champion_after": {"accuracy": accuracy, "buckets": buckets, "frontier": 0, "reach": 0},
            "vote": {} if index == 0 else {"pseudo_label_precision": 0.8 + index / 100},
            "curation": {} if index == 0 else {"prompts_in": 100, "prompts_kept": 40 + index},
            "decision": None if index == 0 else {"promote": index % 2 == 1, "reason": "r", "champion_accuracy": 0.1,
                                                 "candidate_accuracy": 0.2, "p_value": 0.01},
            "timings": None})
    return {"name": "t", "summary": {}, "rounds": rounds}


def _integer_ticks(ax) -> bool:
    low, high = ax.get_xlim()
    return all(float(t).is_integer() for t in ax.get_xticks() if low <= t <= high)


def test_a_task_with_named_buckets_gets_the_per_round_plot_filled():
    import matplotlib.pyplot as plt

    fig = figure(_report([{"gsm8k": 0.3, "math": 0.1}, {"gsm8k": 0.4, "math": 0.2}, {"gsm8k": 0.5, "math": 0.2}]))
    (ax,) = fig.axes  # no per-bucket panel: the buckets are names, not lengths
    assert [len(line.get_xdata()) for line in ax.lines] == [3, 2, 2]  # accuracy (with the seed), precision, yield
    assert _integer_ticks(ax)
    plt.close(fig)


def test_numeric_buckets_get_a_per_bucket_panel_with_integer_ticks():
    import matplotlib.pyplot as plt

    fig = figure(_report([{"1": 1.0, "2": 0.5, "3": 0.0}, {"1": 1.0, "2": 0.9, "3": 0.2}]))
    per_round, per_bucket = fig.axes
    assert len(per_bucket.lines) == 2 and list(per_bucket.lines[0].get_xdata()) == [1, 2, 3]
    assert _integer_ticks(per_round) and _integer_ticks(per_bucket)
    plt.close(fig)


@pytest.mark.parametrize("buckets", [{"gsm8k": 0.3}, {"5": 0.3}])
def test_html_report_embeds_the_plot(buckets):
    assert "data:image/png;base64," in html_report(_report([buckets, buckets]))
