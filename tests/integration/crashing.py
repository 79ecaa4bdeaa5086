"""A generate stage whose worker process dies (os._exit, like an OOM kill) in the middle of its first
batch ever: the runner must get the actor restarted and the batch retried, not fail the run."""

import os
from pathlib import Path

from alignfactory.stages.synthesize.generate import Generate


class CrashOnceGenerate(Generate):
    class Params(Generate.Params):
        crash_marker: str  # file created just before the crash; its presence means "crashed already"

    def __call__(self, rows):
        marker = Path(self.params.crash_marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(137)
        return super().__call__(rows)
