"""The Get Fathom-R1-14B dialog's worker: the remaining steps, one after another.

A QObject on its own QThread (the dialog's widgets are never touched here): it reads what is
done, chooses the level once the checkpoint's config is there, runs each step in its child
process (setup_steps.run_step) and records it, and reports through queued signals.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from fathom_desktop.engine.types import FATHOM_N_CTX
from fathom_desktop.gui.model_list import probe_gpu
from fathom_desktop.level_choice import Recommendation, measured_text
from fathom_desktop.model_setup import (
    SetupPlan,
    SetupState,
    Step,
    StepCancelled,
    choose_level,
    gpu_layers_for_reference,
    next_step,
    read_state,
    write_state,
)
from fathom_desktop.setup_steps import run_step

CANCELLED = "Cancelled; the finished steps are kept, and Continue goes on from here."


class SetupRun(QObject):
    """Runs the remaining steps on its own QThread; reports back through signals."""

    step_started = Signal(object)  # Step
    step_finished = Signal(object, object)  # Step, SetupState (a copy)
    progress = Signal(str, int, int, str)  # title, done, total, message
    recommended = Signal(object, object)  # Recommendation, SetupState
    finished = Signal(object)  # SetupState
    failed = Signal(str)
    cancelled = Signal(str)

    def __init__(self, plan: SetupPlan) -> None:
        super().__init__()
        self.plan = plan
        self.cancel = threading.Event()
        self.thread = QThread()
        self.moveToThread(self.thread)
        # Direct: started is emitted in the new thread, where this object now lives.
        self.thread.started.connect(self.run, Qt.ConnectionType.DirectConnection)

    def start(self) -> None:
        self.thread.start()

    @Slot()
    def run(self) -> None:
        try:
            self._run()
        except StepCancelled:
            self.cancelled.emit(CANCELLED)
        except Exception as error:  # every failure reaches the user as one line
            if self.cancel.is_set():
                self.cancelled.emit(CANCELLED)
            else:
                text = " ".join(str(error).split()) or type(error).__name__
                self.failed.emit(text)
        finally:
            self.thread.quit()

    def _run(self) -> None:
        plan = self.plan
        state = read_state(plan)
        gpu = probe_gpu()
        config_json = plan.checkpoint_dir / "config.json"
        while (step := next_step(plan, state)) is not None:
            if self.cancel.is_set():
                raise StepCancelled
            if step is not Step.DOWNLOAD and state.level is None:
                state = self._choose(plan, state, gpu)
                continue  # the imatrix may now be unneeded
            if step is not Step.DOWNLOAD and config_json.is_file() and plan.gpu_layers is None:
                plan = replace(plan, gpu_layers=gpu_layers_for_reference(config_json, gpu))
            self.step_started.emit(step)
            result = run_step(plan, step, state.level, self.progress.emit, self.cancel)
            state.mark_done(step)
            if step is Step.MEASURE:
                state.measured = result["stats"]
            write_state(plan, state)
            self.step_finished.emit(step, _copy(state))
            if step is Step.MEASURE and state.level is not None:
                measured = {state.level: result["stats"]}
                again = choose_level(plan, gpu, FATHOM_N_CTX, measured)
                if again.level.name != state.level:
                    # Chosen for another GPU or memory than now: keep its reason, add the figures.
                    made = replace(again.level, name=state.level)
                    stats = result["stats"]
                    made = replace(made, kld=stats.get("kld_mean"), top1=stats.get("top1"))
                    again = Recommendation(made, f"{state.reason} Measured: {measured_text(made)}.")
                state.reason = again.reason
                write_state(plan, state)
                self.recommended.emit(again, _copy(state))
        self.finished.emit(_copy(state))

    def _choose(self, plan: SetupPlan, state: SetupState, gpu) -> SetupState:
        chosen = choose_level(plan, gpu, FATHOM_N_CTX)
        state.level, state.reason = chosen.level.name, chosen.reason
        write_state(plan, state)
        self.recommended.emit(chosen, _copy(state))
        return state

    def stop_and_wait(self) -> None:
        self.cancel.set()
        self.thread.quit()
        self.thread.wait()


def _copy(state: SetupState) -> SetupState:
    return SetupState(list(state.done), state.level, state.reason, state.measured)
