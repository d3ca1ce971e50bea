"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class VQGenError(Exception):
    """A problem with the user's input or files; the message says what is wrong and what to do."""


class TrainingInterrupted(Exception):
    """Raised inside the training loop after a SIGINT/SIGTERM, once state has been saved."""
