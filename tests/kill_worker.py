"""`ham-synth` with a SIGKILL inside the checkpoint write window, the moment a random kill rarely
hits: orbax has written the checkpoint of step KILL_AT_CHECKPOINT into its temporary folder and
is about to commit it (the rename that makes it a checkpoint).

    KILL_AT_CHECKPOINT=4 python tests/kill_worker.py train --config=... --workdir=...
"""

import os
import signal

from orbax.checkpoint._src.path import atomicity

from ham_synth import main

KILL_AT = os.environ["KILL_AT_CHECKPOINT"]
_commit = atomicity.AtomicRenameTemporaryPath.finalize


async def _commit_or_die(self):
    if self._final_path.name == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return await _commit(self)


if __name__ == "__main__":
    atomicity.AtomicRenameTemporaryPath.finalize = _commit_or_die
    main.run()
