"""Notebook widgets over the runtime's job API: the job monitor, the jobs table, TensorBoard in the
output, and the configuration form."""
from byzer_magic.widgets.form import ConfigForm
from byzer_magic.widgets.jobs_table import JobsTable, jobs_table
from byzer_magic.widgets.loss_plot import LossPlot, loss_svg
from byzer_magic.widgets.monitor import JobMonitor
from byzer_magic.widgets.tensorboard_frame import TensorBoardFrame, frame_url, tensorboard_frame

__all__ = ["ConfigForm", "JobMonitor", "JobsTable", "LossPlot", "TensorBoardFrame", "frame_url", "jobs_table",
           "loss_svg", "tensorboard_frame"]
