"""List the documentation examples that were not run (``<!-- not-run: reason -->``) at the end of every
test session, even under ``-q``, so a skipped example is never silent."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    lines = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if "not-run:" in reason and "[" in report.nodeid:
            where = report.nodeid.rsplit("[", 1)[1].rstrip("]")
            lines.append(f"{where}: {reason.split('not-run:', 1)[1].strip()}")
    if lines:
        terminalreporter.write_sep("-", "documentation examples not run (<!-- not-run: ... --> in the docs)")
        for line in lines:
            terminalreporter.write_line(line)
