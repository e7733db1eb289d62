"""Fuzz targets for every parser of discord-voicerecv and for the receive pipeline as a whole.

Each target in :data:`fuzz.targets.TARGETS` takes one input (``bytes``) and raises only when it finds a bug: an
exception other than the documented ones, or a broken invariant (an ``AssertionError``). ``python -m fuzz.run``
drives them with atheris (coverage guided, libFuzzer); ``tests/test_fuzz_regressions.py`` replays the crashes found
and runs a short hypothesis pass over every target in the normal test suite.
"""
