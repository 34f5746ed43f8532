"""The one exception type for bad input: the CLI prints its message as one line."""


class UserError(Exception):
    """Bad input from the user (config, data, paths): message names the file and problem."""


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the same command continues it.

    Carries what `trainer.run` would have returned (`state`, `history`) for callers that
    want them; the CLI exits with `EXIT_CODE` (EX_TEMPFAIL), which the SLURM example
    requeues on.
    """

    EXIT_CODE = 75

    def __init__(self, message: str, state=None, history=None):
        super().__init__(message)
        self.state, self.history = state, history
