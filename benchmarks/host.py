"""The machine a benchmark ran on, for its JSON: a GPU figure of a model whose step is bound by the host
(Python and kernel launches) moves with the host's CPU, so results name it beside the card."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info
