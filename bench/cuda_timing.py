"""GPU time of a piece of work captured once in a CUDA graph, so that launch overhead does not count."""

from __future__ import annotations

from typing import Callable

import torch


def graph_seconds(step: Callable[[], None], warmups: int = 1, replays: int = 10, measurements: int = 1) -> float:
    """Median over `measurements` of the seconds one replay of `step`'s graph takes (each timed over `replays`
    replays), after `warmups` eager calls (which also let Triton autotune)."""
    for _ in range(warmups):
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(measurements):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000 / replays)
    return sorted(times)[len(times) // 2]
