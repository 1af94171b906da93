"""Prints how many bad-input cases the property suite tried (for README's reliability section)."""

import collections

TOTALS = collections.Counter()


def pytest_terminal_summary(terminalreporter):
    if TOTALS:
        t = TOTALS
        terminalreporter.write_line(
            f"fastmtl reliability: {t['cases']} bad-input cases tried: {t['raised']} raised an error naming "
            f"the argument, {t['equal']} equal to the reference, {t['meta']} meta calls agreeing with CPU, "
            f"{t['absurd']} absurd sizes accepted on empty input"
        )
