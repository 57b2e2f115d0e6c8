"""gunicorn settings for the benchmarks: the project's gunicorn.conf.py, with the access log optional.

The command line's -w and -b override `workers` and `bind`. BENCH_ACCESS_LOG=0 turns the access log off.
"""

import os
import runpy
from pathlib import Path

globals().update(
    {k: v for k, v in runpy.run_path(str(Path(__file__).parent.parent / "gunicorn.conf.py")).items() if k[0] != "_"}
)
if os.environ.get("BENCH_ACCESS_LOG", "1") == "0":
    accesslog = None
