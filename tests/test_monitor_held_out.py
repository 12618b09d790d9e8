"""The monitor shows the held-out loss as a second series and the tokens seen of the corpus (no Ray:
a job folder as the runtime writes it, metrics written by the real MetricsWriter)."""
from __future__ import annotations

from byzer_magic.runtime.jobfiles import JobFiles
from byzer_magic.runtime.kernel.jobs import JobHandle
from byzer_magic.runtime.spec import CorpusStats, JobLayout
from byzer_magic.runtime.worker.metrics import MetricsWriter
from byzer_magic.widgets import JobMonitor, loss_svg
from tests.support.jobs import write_job_folder


class Running(JobHandle):
    def status(self):
        return "RUNNING"


def test_held_out_series_and_tokens_of_the_corpus(tmp_path):
    job_dir = write_job_folder(tmp_path / "demo", "demo")
    JobFiles(job_dir).write_json("plan.json", JobLayout(total_steps=20, steps_per_epoch=10, tokens_per_step=100,
                                                        corpus=CorpusStats(train_tokens=1000)).to_json())
    writer = MetricsWriter(job_dir)
    for step in range(1, 11):
        held = {"eval_loss": 6.0 - step / 5, "eval_perplexity": 1.0} if step % 5 == 0 else {}
        writer.log(step, epoch=0, loss=7.0 - step / 10, lr=1e-3, tokens=step * 100, **held)
    writer.close()
    monitor = JobMonitor(Running("demo", job_dir), refresh=0)
    monitor.refresh_now()
    assert monitor.plot.held_out == [(5, 5.0), (10, 4.0)]
    assert 'class="held-out"' in monitor.plot.svg.value and "held-out 4" in monitor.plot.svg.value
    assert "1,000 tokens seen of 2,000 (50.0%)" in monitor.speed.value
    assert "held-out loss 4" in monitor.speed.value
    assert 'class="held-out"' not in loss_svg([(1, 2.0), (2, 1.5)])
    monitor.close()
