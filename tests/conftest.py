"""Test-wide settings.

Hypothesis fails an example that takes longer than its deadline (200 ms by default). On a
shared 2-core machine a torch call can take that long under load, so a deadline would make
the suite's verdict depend on the neighbours: no deadline anywhere.
"""

from hypothesis import settings

settings.register_profile("skfastflow", deadline=None)
settings.load_profile("skfastflow")
