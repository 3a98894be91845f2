"""Errors a user can meet. Each message names the thing at fault and what to do."""

ANSWERS_SAVED = " (The windows answered so far are saved.)"  # a started run's error says so


def one_line(exc: BaseException) -> str:
    """The last line of an error from elsewhere (Ray's carry a traceback), for a message of ours."""
    lines = str(exc).strip().splitlines()
    return lines[-1][:300] if lines else type(exc).__name__


class SigrayError(Exception):
    """Base of every error sigray raises on purpose."""


class InputError(SigrayError):
    """A signal file or frame cannot be used (missing, wrong columns, NaN, too short...)."""


class WindowingError(InputError):
    """Signal ``signal`` cannot be windowed: too short for one window, sigllm's own error, or its
    file gone or changed since planning (read again where it is used). Raised before any window
    of the run was asked; a run that started stops with SignalStoppedRun."""

    def __init__(self, signal: str, message: str):
        super().__init__(message)
        self.signal = signal
        self.reason = message


class SignalStoppedRun(SigrayError):
    """A run stopped on signal ``signal``, which could not be windowed once the run had started
    (``reason``: a WindowingError's); the windows answered before are saved."""

    def __init__(self, signal: str, reason: str):
        super().__init__(f"{reason}{ANSWERS_SAVED}")
        self.signal = signal
        self.reason = reason


class ConfigError(SigrayError):
    """A run configuration is invalid (unknown pipeline, bad parameter...)."""


class NoWindowFits(ConfigError):
    """Not one window's prompt leaves room for its answer in the engine's context.

    ``shortest``: the shortest prompt's size and ``room``: the most a prompt may take, in
    the engine's units (tokens; characters for the test double), so the caller can name
    the ``window_size`` that would fit.
    """

    def __init__(self, message: str, shortest: int, room: int):
        super().__init__(message)
        self.shortest = shortest
        self.room = room


class ModelNotFoundError(SigrayError):
    """The model named in the configuration cannot be found or loaded."""


class StoreError(SigrayError):
    """The store cannot be used (corrupt, another format, unwritable...)."""


class ConfigMismatchError(StoreError):
    """The store was written by a run with another configuration."""


class StoreLockedError(StoreError):
    """Another live coordinator holds the store's lease."""


class ResultsUnavailableError(StoreError):
    """The store holds no saved result for what was asked (run unfinished, or an older store)."""


class SigrayWarning(UserWarning):
    """Odd but usable input or settings (unsorted timestamps, mostly imputed points...)."""


def stopped_by(exc: InputError) -> SigrayError:
    """The error that stops a started run on bad input: SignalStoppedRun naming a signal that
    cannot be windowed (``sigray.benchmark`` puts it on its row and goes on), else ``exc`` with
    the answers said saved (exit 1, not 2: something was written)."""
    if isinstance(exc, WindowingError):
        return SignalStoppedRun(exc.signal, exc.reason)
    return SigrayError(f"{exc}{ANSWERS_SAVED}")
