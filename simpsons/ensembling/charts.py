"""The members-vs-ensemble chart: one horizontal bar per member, and the ensemble's, on one split."""

from __future__ import annotations

import textwrap

from matplotlib.figure import Figure

BAR_HEIGHT_INCHES = 0.4  # the figure grows with the number of bars, so labels never overlap
TITLE_CHARACTERS = 80  # per line, within the figure's 7 inches


def members_vs_ensemble(labels: list[str], accuracies: list[float], ensemble: float, split: str, title: str) -> Figure:
    """Members' accuracies in the order given (blue), then the ensemble's (orange), values at the bars.

    `labels` should be short (the members' run names, which naming.py keeps short): the axes keep most
    of the figure's width.
    """
    names = [*labels, "ensemble"]
    values = [*accuracies, ensemble]
    figure = Figure(figsize=(7, 1.6 + BAR_HEIGHT_INCHES * len(names)), layout="constrained")
    axes = figure.subplots()
    positions = range(len(names))
    bars = axes.barh(positions, values, color=["tab:blue"] * len(labels) + ["tab:orange"])
    axes.set_yticks(positions, names)
    axes.bar_label(bars, fmt="%.4f", padding=3)
    axes.invert_yaxis()  # the best-ranked member on top, the ensemble at the bottom
    axes.set_xlim(0, 1.18)  # room for "1.0000" right of a full bar, inside the axes
    axes.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])  # none past 1: accuracies end there
    axes.set_xlabel(f"{split} accuracy")
    axes.set_ylabel("member (run name)")
    figure.suptitle("\n".join(textwrap.wrap(title, TITLE_CHARACTERS)), fontsize="medium")  # centred on the figure
    return figure
