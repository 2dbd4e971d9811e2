"""Transforms that misbehave on one named subject, for the fault cases.

At module level of a module of their own so that spawn and forkserver workers can unpickle them.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

import shmqueue as sq


class MisbehaveOn(sq.Transform):
    """Passes subjects through, except the one named ``name``, on which it calls :meth:`act`."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        if subject["name"] == self.name:
            self.act()
        return subject

    def act(self) -> None:
        raise NotImplementedError


class FailOn(MisbehaveOn):
    """Raises, as a corrupt volume would."""

    def act(self) -> None:
        raise ValueError(f"intensities of {self.name} are corrupt.")  # a period: not doubled


class ExitOn(MisbehaveOn):
    """Ends the worker process, as a library calling exit() would."""

    def act(self) -> None:
        os._exit(3)


class InterruptTrainingOn(MisbehaveOn):
    """Sends Ctrl-C to the training process (waiting for this subject), then hangs."""

    def act(self) -> None:
        os.kill(os.getppid(), signal.SIGINT)
        threading.Event().wait()  # a stuck worker: close() must terminate it


class HangOn(MisbehaveOn):
    """The worker hangs on the subject (a transform stuck in a library)."""

    def act(self) -> None:
        threading.Event().wait()


class SignalTrainingOn(MisbehaveOn):
    """Sends SIGUSR1 to the training process (waiting for this subject), then hangs."""

    def act(self) -> None:
        os.kill(os.getppid(), signal.SIGUSR1)
        threading.Event().wait()
