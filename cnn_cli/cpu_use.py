"""How many cores other processes keep busy now, for trainer.num_threads=auto: measured over
this process's start-up where Linux counts CPU time, since the 1-minute load average lags a
minute behind (after a job ends it still reads 0.5 to 1 on an idle machine)."""

from __future__ import annotations

import os
import time
from typing import NamedTuple

PROC_STAT = "/proc/stat"  # Linux: the time all cores spent in each state since boot, in clock ticks
SHORTEST_WINDOW = 0.3  # seconds: at 100 ticks a second a shorter window counts too few ticks to say anything


class CpuClock(NamedTuple):
    """The CPU time spent so far, by the whole machine and by this process."""

    machine: float  # CPU seconds of work on all cores together, since boot
    own: float  # this process's CPU seconds, all its threads, since it started
    wall: float  # time.monotonic()


def read_clock() -> CpuClock | None:
    """Now; None where there is no /proc/stat to read (macOS, Windows)."""
    try:
        with open(PROC_STAT) as stat:
            name, *ticks = stat.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(tick) for tick in ticks[:8])
        per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if name != "cpu":
        return None
    work = user + nice + system + irq + softirq + steal  # guest time is counted in user and nice already
    return CpuClock(work / per_second, time.process_time(), time.monotonic())


class CpuWindow:
    """The CPU time other processes spend from the window's start until now."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start = read_clock()

    def others_busy(self) -> tuple[float, float] | None:
        """The cores other processes kept busy on average (the machine's CPU time less this
        process's own, over the wall time) and over how many seconds; None without
        /proc/stat, or when the window is too short to count."""
        now = read_clock()
        if self.start is None or now is None or now.wall - self.start.wall < SHORTEST_WINDOW:
            return None
        seconds = now.wall - self.start.wall
        return max(0.0, (now.machine - self.start.machine - (now.own - self.start.own)) / seconds), seconds


# cnn-train imports this module first, so the window spans its start-up (imports, compose)
SINCE_START = CpuWindow()
if hasattr(os, "register_at_fork"):  # a forked child's CPU time starts again at 0, and so does its window
    os.register_at_fork(after_in_child=SINCE_START.restart)


def busy_elsewhere() -> tuple[float, str]:
    """The cores other work keeps busy, and how that was measured (for the log): over the
    window since start-up, or since the last call that measured (a sweep's previous run);
    else the 1-minute load average (processes running or waiting for a core). The figure
    is rounded as the log shows it, so the log names the number the choice used."""
    measured = SINCE_START.others_busy()
    if measured is not None:
        SINCE_START.restart()
        busy, seconds = round(measured[0], 2), measured[1]
        return busy, f"{busy:.2f} of them busy with other work over the last {seconds:.1f} s"
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        return 0.0, "no load figure on this system"
    return load, f"load average {load:.2f}"
