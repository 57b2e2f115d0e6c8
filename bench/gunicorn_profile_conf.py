"""gunicorn settings for profiling: bench/gunicorn_conf.py, plus pyinstrument sampling every worker.

Each worker starts a profiler once it has loaded the app (imports are not counted) and, when it exits, writes the
profile (a pyinstrument session) to $BENCH_PROFILE_DIR/worker-<pid>.pyisession.
Used by bench/profile_gunicorn.py.
"""

import os
import runpy
from pathlib import Path

globals().update(
    {k: v for k, v in runpy.run_path(str(Path(__file__).parent / "gunicorn_conf.py")).items() if k[0] != "_"}
)


def post_worker_init(worker):
    from pyinstrument import Profiler

    worker.bench_profiler = Profiler(interval=0.0005)
    worker.bench_profiler.start()


def worker_exit(server, worker):
    profiler = getattr(worker, "bench_profiler", None)
    if profiler is not None:
        session = profiler.stop()
        session.save(str(Path(os.environ["BENCH_PROFILE_DIR"]) / f"worker-{os.getpid()}.pyisession"))
