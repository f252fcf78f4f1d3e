"""The CLI's one progress display: tqdm on a terminal, a bounded number of plain lines elsewhere."""

from __future__ import annotations

import io

from tqdm import tqdm

from clipcal.commands._progress import CliProgress, PlainBar, open_bar
from clipcal.embed import Progress as EmbedProgress
from clipcal.methods.base import Progress as MethodProgress


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_non_tty_10000_updates_print_a_bounded_number_of_lines():
    buf = io.StringIO()  # not a terminal, like CI logs or `nohup`
    bar = CliProgress("embedding", unit="img", file=buf)
    for i in range(10_001):
        bar(EmbedProgress(i, 10_000, message="embedding"))
    bar.close()
    out = lines(buf)
    assert isinstance(bar.bar, PlainBar)
    # first line, one per 10 % step, nothing more (the loop takes far less than 10 s)
    assert 2 <= len(out) <= 12, out
    assert out[0].startswith("embedding:   0% 0/10000")
    assert out[-1].startswith("embedding: 100% 10000/10000")
    assert "\r" not in buf.getvalue()


def test_data_layer_calls_non_tty_bounded():
    buf = io.StringIO()
    cb = CliProgress("checking images", unit="img", file=buf)
    for i in range(1, 10_001):
        cb(i, 10_000, "checking image files")  # the data layer's (done, total, message) form
    out = lines(buf)
    assert len(out) <= 12 and out[-1].startswith("checking images: 100% 10000/10000")
    assert "checking image files" in out[-1]


def test_plain_bar_time_rule_with_fake_clock():
    """Without a total only the time rule applies: one line per 10 s, whatever the number of updates."""
    clock, buf = FakeClock(), io.StringIO()
    bar = PlainBar(total=None, desc="downloading", unit="B", unit_scale=True, file=buf, clock=clock)
    for _ in range(800):  # 800 updates over 100 s (0.125 s: exact in binary)
        clock.t += 0.125
        bar.update(1250)
    bar.close()
    assert 10 <= bar.lines <= 12, lines(buf)
    assert lines(buf)[-1] == "downloading: 1.00M [01:40, 10.0kB/s]"


def test_plain_bar_step_rule_and_quiet_when_nothing_changes():
    clock, buf = FakeClock(), io.StringIO()
    bar = PlainBar(total=100, desc="x", file=buf, clock=clock)
    assert lines(buf) == ["x:   0% 0/100 [00:00<?, ?it/s]"]
    bar.update(9)
    assert bar.lines == 1  # < 10 % and < 10 s
    bar.update(1)
    assert bar.lines == 2  # another 10 %
    clock.t += 60
    bar.refresh()
    assert bar.lines == 2  # time passed but nothing new to say
    bar.set_postfix_str("stage 2")
    assert bar.lines == 3
    bar.close()
    bar.close()
    assert bar.lines == 3  # the last state was already printed


def test_tty_gets_a_tqdm_bar():
    buf = io.StringIO()
    bar = open_bar("embedding", total=10, file=buf, tty=True)
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(open_bar("embedding", total=10, file=io.StringIO()), PlainBar)


def test_embed_resume_events_and_quiet_messages():
    buf = io.StringIO()
    bar = CliProgress("embedding", unit="img", log_messages=True, quiet=("embedding", "starting"), file=buf)
    bar(EmbedProgress(600, 1000, message="resuming: 3 of 5 shards already done"))
    bar(EmbedProgress(600, 1000, message="starting"))
    bar(EmbedProgress(800, 1000, message="embedding"))
    bar(EmbedProgress(1000, 1000, message="stored 1000 embeddings (0 skipped)"))
    bar(EmbedProgress(1000, 1000, message="stored 1000 embeddings (0 skipped)"))  # repeated: nothing new
    bar.close()
    out = lines(buf)
    assert bar.bar.initial == 600 and bar.bar.n == 1000  # the rate counts this run's images only
    assert out.count("resuming: 3 of 5 shards already done") == 1
    assert out.count("stored 1000 embeddings (0 skipped)") == 1
    assert "starting" not in out and "embedding" not in out
    assert sum(line.startswith("embedding: 100% 1000/1000") for line in out) == 1


def test_new_total_starts_a_new_bar():
    """A download reports each file from 0 with its own size."""
    buf = io.StringIO()
    cb = CliProgress("downloading", unit="B", unit_scale=True, file=buf)
    for total in (2000, 5000):
        for done in range(0, total + 1, 500):
            cb(done, total, "downloading")
    out = lines(buf)
    assert out[-1].startswith("downloading: 100% 5.00k/5.00k")
    assert any(line.startswith("downloading: 100% 2.00k/2.00k") for line in out)


def test_method_fractions_and_fixed_total():
    buf = io.StringIO()
    bar = CliProgress("calibrating", unit="method", total=3, file=buf)
    bar(MethodProgress(done=1.5, total=3, message="ERM (last layer): epoch 50/100"))
    bar(MethodProgress(done=3, total=3, message="CFR done"))
    out = lines(buf)
    assert out[0].startswith("calibrating:   0% 0/3")
    assert any(line.startswith("calibrating:  50% 1.50/3") and "epoch 50/100" in line for line in out), out
    assert out[-1].startswith("calibrating: 100% 3/3") and "CFR done" in out[-1]
