"""Where kfmagic keeps its files in the working directory (the notebook's folder).

A leaf module: backends write runs here, and compile-time checks (portability) read past runs
from here, without either depending on the other.
"""

import os

# Each run's directory: `<RUNS_DIR>/<run id>/<step>/` holds the step's spec, result and outputs.
RUNS_DIR = os.path.join(".kfmagic", "runs")
