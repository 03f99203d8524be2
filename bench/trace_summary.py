"""Where a page's main thread spends its time, from a Chromium performance trace.

    python -m bench.trace_summary TRACE.json [--top 15]

The trace is what ``browser.start_tracing`` (Playwright) or Chrome's Performance panel saves,
e.g. ``SMOOTHNESS_TRACE=…`` of ``tests/e2e/test_viewer.py``'s smoothness measurement. Prints,
for the renderer's main thread over the traced window: the time busy, the tasks longer than
50 ms (what ``PerformanceObserver`` reports as long tasks) and the frames drawn, then the
*self* time of each kind of event (style, layout, pre-paint, paint, script by function, GC, …)
so that nested events are not counted twice.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

LONG_TASK_US = 50_000


def main_thread(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(pid, tid) of the page's main thread: the busiest CrRendererMain."""
    names = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
             and e.get("args", {}).get("name") == "CrRendererMain"}
    busy = Counter((e["pid"], e["tid"]) for e in events if e.get("ph") == "X" and (e["pid"], e["tid"]) in names)
    if not busy:
        raise SystemExit("no CrRendererMain thread with complete events in this trace")
    return busy.most_common(1)[0][0]


def label(event: dict[str, Any]) -> str:
    """An event's name; script calls also name the function (and file) they ran."""
    data = event.get("args", {}).get("data") or {}
    if event["name"] in ("FunctionCall", "v8.callFunction") and data.get("functionName") is not None:
        url = str(data.get("url", "")).rsplit("/", 1)[-1]
        return f"{event['name']} {data['functionName'] or '(anonymous)'} {url}:{data.get('lineNumber', '?')}"
    return str(event["name"])


def summarise(events: list[dict[str, Any]], top: int) -> str:
    pid, tid = main_thread(events)
    mine = sorted((e for e in events if e.get("ph") == "X" and (e["pid"], e["tid"]) == (pid, tid) and "dur" in e),
                  key=lambda e: (e["ts"], -e["dur"]))
    self_time: Counter[str] = Counter()
    stack: list[tuple[int, str, list[int]]] = []  # (end, label, [time of its children])
    tasks: list[int] = []

    def pop() -> None:
        end, name, children = stack.pop()
        self_time[name] += children[0]

    for event in mine:
        while stack and stack[-1][0] <= event["ts"]:
            pop()
        if not stack and event["name"] in ("RunTask", "ThreadControllerImpl::RunTask"):
            tasks.append(event["dur"])
        if stack:
            stack[-1][2][0] -= event["dur"]  # the parent's self time excludes this child
        stack.append((event["ts"] + event["dur"], label(event), [event["dur"]]))
    while stack:
        pop()

    span_us = (mine[-1]["ts"] + mine[-1]["dur"] - mine[0]["ts"]) if mine else 0
    frames = sum(1 for e in events if e.get("name") in ("DrawFrame", "Graphics.Pipeline.DrawAndSwap")
                 and e.get("ph") in ("X", "b", "B", "I", "i") and e["pid"] == pid) or "?"
    long_tasks = [d for d in tasks if d > LONG_TASK_US]
    lines = [f"window {span_us / 1e6:.1f} s; main thread busy {sum(tasks) / 1e3:.0f} ms in {len(tasks)} tasks; "
             f"long tasks {len(long_tasks)} ({sum(long_tasks) / 1e3:.0f} ms); frame events {frames}",
             "self time by event (ms, share of the busy time):"]
    busy = sum(self_time.values()) or 1
    for name, us in self_time.most_common(top):
        lines.append(f"  {us / 1e3:9.1f}  {100 * us / busy:5.1f} %  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    data = json.loads(args.trace.read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    print(summarise(events, args.top))


if __name__ == "__main__":
    main()
