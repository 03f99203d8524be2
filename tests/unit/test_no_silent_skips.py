"""Under CI=true a missing tool fails the run; elsewhere it skips with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import conftest

CI_SCRIPT = (Path(__file__).parents[2] / ".ci" / "run").read_text()


def test_a_missing_tool_skips_on_a_developer_machine(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="nginx not found"):
        conftest.tool_missing("nginx not found")


def test_a_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="nginx not found .*CI=true"):
        conftest.tool_missing("nginx not found")


@pytest.mark.parametrize("command, package", [("java", "openjdk-17-jre-headless"), ("nginx", "nginx"),
                                              ("chromium", "chromium")])
def test_ci_installs_each_tool_the_tests_look_for_by_the_same_name(command, package):
    # The tests find them with shutil.which(command) (nginx also in /usr/sbin), as `command -v` does.
    assert re.search(rf"command -v {command} >/dev/null .*need_apt\+=\({package}\)", CI_SCRIPT)
