"""Which failed trials a sweep retries: a crash (a trial process or node that died, a bug that may not recur) is
retried from the trial's last checkpoint up to ``--max-failures`` times; a user error (``trainables.errors.UserError``:
a setting, a file, a resource request the user must fix) ends its trial as errored at once, since running the same
configuration again cannot help.

Ray Tune 2.60 has no per-exception retry switch. ``TuneController._process_trial_failure`` calls
``trial.handle_error(exception)`` and then ``trial.should_recover()`` (failures so far <= ``FailureConfig.max_failures``)
with nothing in between that a Trainable, a Callback, a Searcher or a Scheduler can answer: callbacks hear of the
failure only after the retry was queued (``on_trial_recover``). So :func:`install_retry_policy` wraps those two
``Trial`` methods in the driver -- the one place where emotune reaches into Ray's internals for this:
``handle_error`` notes whether the exception is a user error (in the trial's temporary state, which Tune never saves,
so a resumed sweep retries errored trials as ``--resume`` promises), and ``should_recover`` answers False for it.
Everything else, including process deaths (``RayActorError``), keeps Tune's own rule.
"""
from __future__ import annotations

import functools

from trainables.errors import find_user_error

_MARK = "_emotune_retry_policy"


def is_user_error(exc: BaseException | None) -> bool:
    """Whether a trial failed because of a :class:`UserError` (anywhere in its causes: ``find_user_error``)."""
    return find_user_error(exc) is not None


def install_retry_policy() -> None:
    """Make Tune's trials in this (driver) process retry crashes but not user errors; idempotent.

    Wraps ``ray.tune.experiment.trial.Trial.handle_error`` and ``Trial.should_recover`` (see the module docstring for
    why there is no public hook). If a Ray upgrade renames them, this raises at sweep start rather than silently
    retrying user errors.
    """
    from ray.tune.experiment.trial import Trial

    if getattr(Trial.should_recover, _MARK, False):
        return
    handle_error, should_recover = Trial.handle_error, Trial.should_recover

    @functools.wraps(handle_error)
    def _handle_error(self, exc=None, *args, **kwargs):
        self.temporary_state.failed_with_user_error = is_user_error(exc)
        return handle_error(self, exc, *args, **kwargs)

    @functools.wraps(should_recover)
    def _should_recover(self):
        if getattr(self.temporary_state, "failed_with_user_error", False):
            return False
        return should_recover(self)

    setattr(_should_recover, _MARK, True)
    Trial.handle_error = _handle_error
    Trial.should_recover = _should_recover
