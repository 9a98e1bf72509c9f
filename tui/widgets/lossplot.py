"""Training loss curve drawn with textual-plotext."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class LossPlot(PlotextPlot):
    """Training loss (and validation loss, when present) against optimizer steps."""

    def on_mount(self) -> None:
        self.show_points([], [], [], [])

    def show_points(self, steps: list[float], losses: list[float],
                    val_steps: list[float], val_losses: list[float]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss")
        plt.xlabel("step")
        if steps:
            plt.plot(steps, losses, label="train", marker="braille")
        if val_steps:
            plt.plot(val_steps, val_losses, label="validation", marker="braille")
        self.refresh()
