"""Figures that do not mislead: mIoU bars from 0, one figure of a run's curves with integer steps."""
import matplotlib.pyplot as plt
import pandas as pd

from idd_lib import plots


def test_miou_bars_start_at_zero():
    summary = pd.DataFrame({"method": ["baseline", "idd"], "mean": [60.0, 61.0], "std": [0.5, float("nan")]})
    fig = plots.miou_bars(summary, teacher_miou=70.0)
    assert fig.axes[0].get_ylim()[0] == 0
    plt.close(fig)


def test_training_curves_put_every_term_of_a_run_in_one_figure_with_integer_steps():
    history = [{"step": s, "loss/ce": 1.0 / s, "loss/kd": 0.5 / s, "loss/total": 1.5 / s} for s in (10, 20, 30)]
    fig = plots.training_curves({"idd": history}, ["loss/ce", "loss/kd", "loss/total"])
    panels = [ax for ax in fig.axes if ax.has_data()]
    assert [ax.get_title() for ax in panels] == ["loss/ce", "loss/kd", "loss/total"]
    for ax in panels:
        fig.canvas.draw()
        assert all(float(tick).is_integer() for tick in ax.get_xticks())
    plt.close(fig)
