"""``vidcom2 batch``: many questions from a JSONL file, one model load, one record per line.

``input`` reads the items, ``output`` writes the records and tells ``--resume`` what is done,
``progress`` counts and shows them, ``local`` answers the items on this machine and ``ray``
spreads the same work over a Ray cluster (each worker running ``local``'s runner).
"""
