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
    assert [ax.get_title() for ax in panels] == ["cross-entropy", "KD loss", "total loss"]
    assert {ax.get_ylabel() for ax in panels} == {"loss"} and panels[0].get_legend_handles_labels()[1] == ["IDD"]
    for ax in panels:
        fig.canvas.draw()
        assert all(float(tick).is_integer() for tick in ax.get_xticks())
    plt.close(fig)


def test_figures_name_methods_for_readers_in_the_papers_order_without_error_bars_at_one_seed():
    from idd_lib import names

    summary = pd.DataFrame({"method": ["idd+pid", "cwd", "baseline", "kd"], "mean": [66.0, 70.0, 60.0, 64.0],
                            "std": [float("nan")] * 4})
    fig = plots.miou_bars(summary)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Baseline", "KD", "CWD", "IDD+PID"]
    assert ax.get_title() and not ax.containers[0].errorbar           # one seed: no error bars
    plt.close(fig)
    table = pd.DataFrame({"network": ["idd", "teacher", "baseline"], "x": [0.5, 0.8, 0.4], "x std": [0.1, None, 0.1]})
    fig = plots.probe_bars(table, maps=("x",))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Teacher", "Baseline", "IDD"] and fig.axes[0].get_title()
    plt.close(fig)
    assert names.in_method_order(["idd", "dist", "cirkd [cirkd.contrast_sample=total]", "kd", "baseline"]) == [
        "baseline", "kd", "cirkd [cirkd.contrast_sample=total]", "dist", "idd"]
    assert names.method_label("cirkd [x=1]") == "CIRKD [x=1]" and names.metric_label("loss/cwd-feat") == "cwd-feat loss"
