import os
import sys

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "interop"))  # vdhelp, the suites' shared helpers
sys.path.insert(0, os.path.join(HERE, "..", "hostile"))  # make_hostile's generators
