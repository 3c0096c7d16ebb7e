"""The champion's undo stack after a promotion that died half-way (the alias is written last; the
kill tests in tests/e2e/test_faults.py kill a real promotion at each step)."""

from resources.tracking import pushed


def test_a_promotion_that_died_after_writing_its_stack_is_finished_not_pushed_twice() -> None:
    assert pushed(["1"], "1", "2") == ["1", "2"]  # a promotion
    assert pushed(["1", "2"], "1", "2") == ["1", "2"]  # the same after it died before the alias
    assert pushed(["1"], None, "1") == ["1"]  # the first promotion, died before the alias
    assert pushed(["1", "2"], "3", "2") == ["1", "2", "3", "2"]  # an alias set by hand is kept
