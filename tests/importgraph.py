"""Strongly connected components of an import graph, shared by the layout tests
(:mod:`tests.test_layout`, :mod:`tests.cli.test_cli_layers`)."""

from __future__ import annotations

from collections.abc import Mapping, Set


def cycles(graph: Mapping[str, Set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one node (Tarjan, 1972).

    Args:
        graph: node -> the nodes it points at; targets missing from ``graph`` are ignored.

    Returns:
        Each component as a sorted list, components in discovery order.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
