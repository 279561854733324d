from flywheel.tasks import ReversedAddition, load_task

TASK = ReversedAddition()


def test_prompts_are_reversed_sums_and_deterministic():
    rows = TASK.make_prompts(bucket=3, count=50, seed=7, id_prefix="t-")
    assert rows == TASK.make_prompts(bucket=3, count=50, seed=7, id_prefix="t-")
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert len(a) == len(b) == 3 and row["bucket"] == "3"
        assert int(row["answer"][::-1]) == int(a[::-1]) + int(b[::-1])
    assert len({r["id"] for r in rows}) == 50


def test_mixed_lengths_keep_one_operand_at_the_bucket():
    rows = TASK.make_prompts(bucket=5, count=200, seed=1, id_prefix="m-", mixed=True)
    lengths = [tuple(len(x) for x in r["prompt"].rstrip("=").split("+")) for r in rows]
    assert all(max(pair) == 5 for pair in lengths)
    assert len({min(pair) for pair in lengths}) == 5  # the short operand takes every length 1..5
    assert all(TASK.format_issue(r, r["answer"]) is None for r in rows)  # the truth always passes


def test_format_filter_and_extraction():
    row = {"prompt": "71+52="}  # 17 + 25
    assert TASK.extract_answer(" 24 ") == "24"
    assert TASK.extract_answer("2x") is None and TASK.extract_answer("") is None
    assert TASK.format_issue(row, "24") is None and TASK.format_issue(row, "241") is None
    assert TASK.format_issue(row, "2") == "format:length"
    assert TASK.format_issue(row, "2411") == "format:length"
    assert TASK.format_issue(row, "240") == "format:leading_zero"
    assert TASK.is_correct("24", "24") and not TASK.is_correct(None, "24")
    assert load_task("addition").name == "addition"
