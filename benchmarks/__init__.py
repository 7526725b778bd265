"""Benchmarks and the crash-chaos run for nbqup, side by side with Huey and persist-queue.

``python -m benchmarks`` runs the throughput, latency, reopen, ``jobs_df`` and memory
workloads and prints a table of medians and ratios (see ``benchmarks/RESULTS.md``);
``python -m benchmarks.chaos`` SIGKILLs a child process running 500 mixed jobs 20 times
and accounts for every job.  Neither is a timed unit test: ``tests/test_benchmarks.py``
only checks that both run on a tiny size.

Peers are installed with the ``bench`` extra: ``pip install -e '.[bench]'`` (and the
``dask`` extra for the ``nbqup-dask`` row, which is left out without it).
"""
