"""The worker's monkey-patching reads plugin entry points once (start-up, issue 15 point 7)."""

from __future__ import annotations

import importlib.metadata

from gunicorn.workers.ggevent import GeventWorker

from logger.gunicorn_worker import Worker, entry_points_read_once

GROUPS = ("console_scripts", "gevent.plugins.monkey.will_patch_all", "no.such.group")


def test_within_the_block_every_lookup_answers_from_one_reading_and_as_before(monkeypatch):
    real = importlib.metadata.entry_points
    reads = []

    def counting(**params):
        reads.append(params)
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    with entry_points_read_once():
        answers = {group: sorted(ep.name for ep in importlib.metadata.entry_points(group=group)) for group in GROUPS}
        everything = importlib.metadata.entry_points()
    assert reads == [{}], "one reading, not one per lookup"
    assert answers == {group: sorted(ep.name for ep in real(group=group)) for group in GROUPS}
    assert answers["console_scripts"], "this venv has console scripts: the comparison means something"
    assert sorted(everything.groups) == sorted(real().groups)
    assert importlib.metadata.entry_points is counting, "the real function is back after the block"


def test_the_worker_patches_within_the_block(monkeypatch):
    seen = []

    def base_patch(self):
        seen.append(importlib.metadata.entry_points.__module__)

    monkeypatch.setattr(GeventWorker, "patch", base_patch)  # where gunicorn calls patch_all
    Worker.patch(object.__new__(Worker))
    assert seen == ["logger.gunicorn_worker"], "gevent's patch ran with the one-reading lookup"
