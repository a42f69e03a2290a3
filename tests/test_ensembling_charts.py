"""The members-vs-ensemble chart stays readable: every label inside the figure, the bars not squeezed."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from simpsons.ensembling.charts import members_vs_ensemble

LONG_TITLE = "ensemble-weighted-mean-top12-sweep-2026-11-28-12-44-43-backbone=mobilenet,vgg16,resnet50v2-lr=0_01,0_001"


def drawn(count: int):
    labels = [f"inception_resnet_v2 ({i:08x})" for i in range(count)]
    figure = members_vs_ensemble(labels, [0.5 + i / 40 for i in range(count)], 1.0, "test", LONG_TITLE)
    FigureCanvasAgg(figure).draw()
    return figure


@pytest.mark.parametrize("count", [1, 4, 12])
def test_every_label_lies_inside_the_figure_and_the_bars_keep_most_of_its_width(count):
    figure = drawn(count)
    frame = figure.bbox
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text()]
    assert len([t for t in texts if t.get_text().endswith(")")]) >= count  # the members' tick labels are drawn
    for text in texts:
        box = text.get_window_extent()
        inside = box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1
        assert inside, f"{text.get_text()!r} spills out of the figure: {box} not in {frame}"
    [axes] = figure.axes
    assert axes.bbox.width >= 0.5 * frame.width
    assert axes.get_xlabel() == "test accuracy" and figure.get_suptitle().startswith("ensemble-weighted-mean")


def test_the_figure_grows_with_the_number_of_members():
    heights = [drawn(count).get_figheight() for count in (1, 4, 12)]
    assert heights == sorted(heights) and heights[0] < heights[-1]
    per_bar = [drawn(count).axes[0].bbox.height / (count + 1) for count in (4, 12)]
    assert per_bar[1] >= 0.8 * per_bar[0]  # bars do not get thinner as members are added
