"""pipelines/demo.py: the console check `make demo` ends with (no line repeated more than 3 times)."""

from pipelines.demo import MAX_REPEATS, repeat_check, repeated_lines

CLEANER = "\x1b[36m(PlacementGroupCleaner pid=9237)\x1b[0m Failed to query Ray Train Controller actor state."


def test_a_line_seen_more_than_three_times_is_named_with_its_count():
    lines = [CLEANER + "\n"] * 5 + ["step 1\n", "step 2\n", "step 2\n", "\n", "\n", "\n", "\n"] + [" step 3 \n"] * 3
    assert MAX_REPEATS == 3
    # colour codes and blanks removed; blank lines and lines seen 3 times or fewer are not repeats
    assert repeated_lines(lines) == {"(PlacementGroupCleaner pid=9237) Failed to query Ray Train Controller actor "
                                     "state.": 5}  # fmt: skip
    problem = repeat_check(lines)
    assert problem.startswith("1 console line(s) repeated more than 3 times, the most 5 times: '(PlacementGroup")
    assert "\n" not in problem


def test_a_console_without_repeats_passes():
    assert repeated_lines(["a\n", "a\n", "a\n", "b\n"]) == {} and repeat_check(["a\n", "b\n"]) is None
