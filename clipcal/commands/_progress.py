"""The one progress display of the CLI: a tqdm bar on a terminal, a plain line now and then elsewhere.

On a terminal each command shows a tqdm bar. When stderr is not a terminal (CI, ``nohup``, ``… 2> log``)
a tqdm bar would write one line per refresh, so :class:`PlainBar` prints a line at most every ``interval_s``
seconds (10 s) or when the work has advanced by another ``step`` of the total (10 %), plus the first and the
last line.

Usage (every command)::

    bar = CliProgress("embedding", unit="img", log_messages=True, quiet=("embedding", "starting"))
    try:
        embed_benchmark(..., progress=bar)        # Progress objects (done, total, message)
    finally:
        bar.close()

    load_benchmark(..., progress=CliProgress("building demo", unit="img"))   # (done, total, message) calls
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

PLAIN_INTERVAL_S = 10.0
PLAIN_STEP = 0.1
PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def is_tty(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, pytest's capture)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like object without isatty
        return False


class PlainBar:
    """The part of tqdm's interface the CLI uses, printing plain lines at a bounded rate.

    A line is printed when the bar opens, then only when ``interval_s`` seconds have passed or the
    count has advanced by ``step × total`` since the last line, and once more by :meth:`close` if the last
    state was not printed. So ``U`` updates over ``T`` seconds print at most ``2 + 1/step + T/interval_s``
    lines, whatever ``U`` is.

    Args:
        total: units in all, or ``None`` when unknown (then only the time rule applies).
        initial: count at the start (a resumed job); the rate counts from here.
        desc, unit, unit_scale: as tqdm's (``unit_scale=True`` prints 1.2M instead of 1200000).
        file: stream to print to (default stderr).
        bar_format: a :func:`tqdm.tqdm.format_meter` template without ``{bar}`` (default :data:`PLAIN_FORMAT`).
        interval_s, step: the rate limits above.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, total: float | None = None, initial: float = 0, desc: str = "", unit: str = "it",
                 unit_scale: bool = False, file: TextIO | None = None, bar_format: str | None = None,
                 interval_s: float = PLAIN_INTERVAL_S, step: float = PLAIN_STEP,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.initial, self.n = total, initial, initial
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.file = file if file is not None else sys.stderr
        self.bar_format = bar_format
        self.interval_s, self.step, self.clock = interval_s, step, clock
        self.postfix = self.printed_postfix = ""
        self.start = clock()
        self.last_t = self.start
        self.last_n = initial
        self.lines = 0
        self.closed = False
        self._print()  # like tqdm: a line when the work starts

    def format(self) -> str:
        """The current state as one line (tqdm's own formatter, without the bar)."""
        from tqdm import tqdm

        known = self.total is not None and self.total > 0
        fmt = self.bar_format or (PLAIN_FORMAT if known else PLAIN_FORMAT_NO_TOTAL)
        total = self.total if known else None
        n = self.n
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        elif isinstance(n, float):  # methods report fractions of a method
            fmt = fmt.replace("{n_fmt}", "{n:.2f}")
        if not known:
            fmt = fmt.replace("{percentage:3.0f}% ", "").replace("/{total_fmt}", "").replace("<{remaining}", "")
        return tqdm.format_meter(n, total, self.clock() - self.start, prefix=self.desc, unit=self.unit,
                                 unit_scale=self.unit_scale, bar_format=fmt,
                                 postfix=self.postfix or None, initial=self.initial)

    def _due(self) -> bool:
        if self.clock() - self.last_t >= self.interval_s:
            return self.n != self.last_n or self.postfix != self.printed_postfix
        return bool(self.total) and (self.n - self.last_n) >= self.step * self.total

    def _print(self) -> None:
        print(self.format(), file=self.file, flush=True)
        self.last_t, self.last_n = self.clock(), self.n
        self.lines += 1
        self.printed_postfix = self.postfix

    def refresh(self) -> None:
        """Print the state if a line is due."""
        if not self.closed and self._due():
            self._print()

    def update(self, k: float = 1) -> None:
        """Advance by ``k`` units (print if due)."""
        self.n += k
        self.refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """The text after the counts (e.g. the current epoch)."""
        self.postfix = str(s)
        if refresh:
            self.refresh()

    def write(self, s: str, file: TextIO | None = None) -> None:
        """Print a message line (like ``tqdm.write``)."""
        print(s, file=file if file is not None else self.file, flush=True)

    def close(self) -> None:
        """Print the final state unless it is the last line printed."""
        if self.closed:
            return
        if self.n != self.last_n or self.postfix != self.printed_postfix:
            self._print()
        self.closed = True


def open_bar(desc: str, total: float | None = None, initial: float = 0, unit: str = "it",
             unit_scale: bool = False, bar_format: str | None = None, file: TextIO | None = None,
             tty: bool | None = None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`PlainBar`; same interface.

    ``bar_format`` is tqdm's and applies to the terminal bar only (the plain lines have their own format).
    """
    file = file if file is not None else sys.stderr
    if tty if tty is not None else is_tty(file):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, file=file,
                    dynamic_ncols=True, bar_format=bar_format)
    return PlainBar(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, file=file)


class CliProgress:
    """A progress callback for the CLI, fed by any of clipcal's progress reports.

    Accepts :class:`clipcal.embed.Progress` and :class:`clipcal.methods.base.Progress` objects (``done``,
    ``total``, ``message``) and the data layer's ``(done, total, message)`` calls. The bar opens at the first
    report's ``done`` (a resumed job shows this run's rate) unless ``total`` is given up front; a report whose
    total changes or whose count goes back (the next file of a download) starts a new bar; one at the total
    closes it.

    Args:
        desc, unit, unit_scale, bar_format: shown by the bar (see :func:`open_bar`).
        total: open the bar now with this total (e.g. methods to run) instead of at the first report.
        log_messages: print each new message as its own line (events such as "resuming: 3 of 5 shards");
            otherwise messages are shown after the counts.
        quiet: messages that are routine and never printed as lines (with ``log_messages``).
        file, tty: where to print, and whether to draw a tqdm bar (default: when ``file`` is a terminal).

    Attributes:
        bar: the current tqdm bar / :class:`PlainBar` (``None`` before the first report).
    """

    def __init__(self, desc: str, unit: str = "it", total: float | None = None, unit_scale: bool = False,
                 bar_format: str | None = None, log_messages: bool = False, quiet: tuple[str, ...] = (),
                 file: TextIO | None = None, tty: bool | None = None):
        self.desc, self.unit, self.unit_scale, self.bar_format = desc, unit, unit_scale, bar_format
        self.log_messages, self.quiet = log_messages, tuple(quiet)
        self.file, self.tty = file, tty
        self.bar_file = file if file is not None else sys.stderr
        self.bar = None
        self._finished = False
        self._last_message = None
        if total is not None:
            self._open(total, 0)

    def _open(self, total, initial) -> None:
        self.bar = open_bar(self.desc, total=total, initial=initial, unit=self.unit, unit_scale=self.unit_scale,
                            bar_format=self.bar_format, file=self.file, tty=self.tty)
        self._finished = False

    def __call__(self, p, total: float | None = None, message: str = "") -> None:
        if hasattr(p, "done"):
            done, total, message = p.done, getattr(p, "total", None), getattr(p, "message", "") or ""
        else:
            done = p
        bar = self.bar
        repeat = bar is not None and self._finished and total == bar.total and done >= (total or 0)
        if not repeat and (bar is None or done < bar.n or total != bar.total):
            if bar is not None and not self._finished:
                bar.close()
            self._open(total, done)
            bar = self.bar
        self._message(message)
        if self._finished:
            return
        if done > bar.n:
            bar.update(done - bar.n)
        elif message and isinstance(bar, PlainBar):  # tqdm shows a new postfix at its next update
            bar.refresh()
        if total is not None and done >= total:
            bar.close()
            self._finished = True

    def _message(self, message: str) -> None:
        if not message or message == self._last_message:
            return
        self._last_message = message
        if self.log_messages:
            if message not in self.quiet:
                self.bar.write(message, file=self.bar_file)
        elif not self._finished:
            self.bar.set_postfix_str(message[:70], refresh=False)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self.bar is not None and not self._finished:
            self.bar.close()
            self._finished = True
