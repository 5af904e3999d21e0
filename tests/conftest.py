"""Test-wide settings.

Hypothesis fails an example that takes longer than its deadline (200 ms by default). On a
shared 2-core machine a torch call can take that long under load, so a deadline would make
the suite's verdict depend on the neighbours: no deadline anywhere.
"""

from hypothesis import settings

settings.register_profile("skfastflow", deadline=None)
settings.load_profile("skfastflow")


def carried_tolerance(detector, raw_tolerance: float) -> float:
    """A tolerance on raw maps and their scores (in ``[-1, 0]`` and ``[0, 1]``) carried to what
    ``detector`` returns: standardised maps (``standardize_maps``) divide every difference of raw
    maps by the good maps' per-pixel scale, at most by its smallest value."""
    standardizer = getattr(detector, "map_standardizer_", None)
    return raw_tolerance if standardizer is None else raw_tolerance / float(standardizer.scale.min())
