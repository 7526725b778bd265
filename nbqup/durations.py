"""Durations as people read them: ``2.5s``, ``3m10s``, ``1h02m``, ``1d04h``.

One spelling for every view (the dashboard's rows, ``jobs_df``'s notebook display), so a
job's time reads the same wherever it is shown.  The two most significant units only:
a display answers "how long, roughly", the DataFrame keeps the exact timedelta.
"""

from __future__ import annotations

__all__ = ["short_duration"]


def short_duration(seconds: float, precise: bool = False) -> str:
    """``'7s'``, ``'1m05s'``, ``'2h03m'``, ``'1d04h'``, ``'12y200d'``; tenths under 10 s if
    ``precise``.  A negative duration reads as ``0s``.

    >>> [short_duration(s, precise=True) for s in (2.51, 190, 3720, 100_000)]
    ['2.5s', '3m10s', '1h02m', '1d03h']
    """
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f}s" if precise and s < 10 else f"{int(s)}s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d >= 365:
        return f"{d // 365}y{d % 365}d"
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"
