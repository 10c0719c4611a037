"""Every file in invalid/ states the problems it must produce, as `# expect: LINE:COL: PATH: MESSAGE`.

The message part is a prefix: the full message may go on with the fix. Problems are compared as a
set per file, so a missing or an extra report fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.spec import JobSpecError, load_job

CORPUS = sorted((Path(__file__).parent / "invalid").glob("*.toml"))
EXPECT = re.compile(r"^# expect: (?P<line>\d+):(?P<col>\d+): (?P<path>[^:]*): (?P<message>.+)$")


def _expectations(path: Path) -> list[tuple[int, int, str, str]]:
    found = []
    for text in path.read_text(encoding="utf-8").splitlines():
        match = EXPECT.match(text)
        if match:
            found.append((int(match["line"]), int(match["col"]), match["path"], match["message"]))
    return found


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_invalid_file_reports_exactly_its_problems(path: Path) -> None:
    expected = _expectations(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    with pytest.raises(JobSpecError) as caught:
        load_job(path)
    issues = caught.value.issues
    assert all(issue.file == str(path) for issue in issues)
    assert len(issues) == len(expected), "\n".join(map(str, issues))
    for (line, column, dotted_path, message), issue in zip(sorted(expected), sorted(issues), strict=True):
        assert (issue.line, issue.column, issue.path) == (line, column, dotted_path), str(issue)
        assert issue.message.startswith(message), str(issue)
