"""The container image and compose example say what operators rely on (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (requirements-dev.txt installs it)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_slim_and_non_root():
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(stages) >= 2 and all("slim" in image for image in stages)
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")


def test_healthcheck_stopsignal_and_graceful_timeout_below_the_orchestrators():
    assert re.search(r"^HEALTHCHECK .*CMD", DOCKERFILE, re.M | re.S)
    assert "127.0.0.1:{os.environ.get(\\\"PORT\\\", \\\"6006\\\")}/'" in DOCKERFILE  # the liveness route
    assert re.search(r"^STOPSIGNAL SIGTERM$", DOCKERFILE, re.M)
    assert re.search(r'^CMD \["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"\]$', DOCKERFILE, re.M)
    conf = (ROOT / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r'GRACEFUL_TIMEOUT", "(\d+)"', conf).group(1))
    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    grace = int(re.search(r"stop_grace_period: (\d+)s", compose).group(1))
    assert graceful < 30 and graceful < grace, "drain ends before Kubernetes' 30 s default and compose's grace"


def test_compose_example_is_valid_when_docker_compose_is_present():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True) \
        if shutil.which("docker") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "deploy" / "docker-compose.yml"), "config",
                             "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
