"""The language-model path-dependence study; kept for the old command, the driver is ``path_dependence.py``.

python benchmarks/lm_path_dependence.py [args]   ==   python benchmarks/path_dependence.py --modality lm [args]
"""

from __future__ import annotations

import sys

from path_dependence import main  # benchmarks/ is on sys.path when run as a script

if __name__ == "__main__":
    main(["--modality", "lm", *sys.argv[1:]])
