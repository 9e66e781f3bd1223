"""``vidcom2 watch``: questions about a live stream in bounded memory.

``source`` reads frames from anything FFmpeg reads live (its own thread, sampled by
presentation time, reconnecting), ``memory`` keeps the stream's compressed chunks in the
language model's cache, ``forget`` decides what a full memory lets go, and ``session`` runs
the chunker between them and reports lag, skips and the summary.
"""
