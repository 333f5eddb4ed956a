"""Progress output: a bar on a terminal, a few plain lines in a log file."""
import io

from kdcache import progress


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_gets_a_line_per_interval_not_per_batch(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()  # not a terminal
    seen = []
    for i in progress.track(range(1000), desc="epoch 1/3", stream=out, interval_s=30):
        clock.t += 0.1  # 100 s in all: three interval lines and the final one
        seen.append(i)
    lines = out.getvalue().splitlines()
    assert seen == list(range(1000))
    assert len(lines) == 4, lines
    assert lines[0].startswith("epoch 1/3: 300/1000 batches (30%)") and "s left" in lines[0]
    assert lines[-1].startswith("epoch 1/3: 1000/1000") and lines[-1].endswith("done")
    assert "\r" not in out.getvalue()


def test_short_loops_stay_silent_and_disabled_prints_nothing(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    assert list(progress.track(range(5), desc="x", stream=out)) == list(range(5))
    assert out.getvalue() == ""  # under one interval: no line at all, not even "done"
    for _ in progress.track(range(1000), desc="x", stream=out, enabled=False):
        clock.t += 0.1  # 100 s: an enabled loop would have written 4 lines
    assert out.getvalue() == ""


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_redrawn_bar_not_lines():
    out = FakeTerminal()
    assert list(progress.track(range(50), desc="epoch 2/3", stream=out)) == list(range(50))
    text = out.getvalue()
    # tqdm draws one line and redraws it in place ("\r"), then clears it (leave=False): no lines pile up
    assert text.startswith("\repoch 2/3:") and "/50" in text and "\n" not in text and text.endswith("\r")


def test_counter_writes_one_line_per_update_in_a_log():
    out = io.StringIO()
    c = progress.counter(3, desc="sweep", stream=out)
    c.set_postfix_str("time left 0:01:00")
    c.update(1)
    c.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("sweep: 2/3 runs") and lines[1].endswith("time left 0:01:00")


def test_one_slow_batch_gets_one_line_not_two(monkeypatch):
    """A one-batch dump printed its progress line twice: once as the interval line, once as 'done'."""
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    for _ in progress.track(range(1), desc="dump fashion-mnist/train", stream=out, interval_s=30):
        clock.t += 40.0  # the one batch takes longer than an interval
    assert out.getvalue().splitlines() == ["dump fashion-mnist/train: 1/1 batches (100%), 40s elapsed, done"]
