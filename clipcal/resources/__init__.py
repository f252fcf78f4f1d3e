"""Data files shipped with clipcal (read with ``importlib.resources``): ``concepts.txt``, the suggested
vocabulary of candidate spurious concepts used by :func:`clipcal.concepts.load_concept_vocabulary`."""
