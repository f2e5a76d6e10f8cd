"""Prints the fuzz test's summary line at the end of the run, passed or failed (the test's own
output is captured when it passes)."""

SUMMARY: list = []


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARY:
        terminalreporter.write_line(line)
