"""What an empty chat shows: the model in use, what it can do, three prompts to try, and where to
get Fathom-R1-14B.

A prompt is clicked into the composer, not sent: a reasoning model may think for minutes on a
partial GPU offload, so the user sees (and may edit) the question before starting that, and a
prompt clicked while the model is still loading waits in the composer instead of being lost.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.demo import DEMO_NAME
from fathom_desktop.engine.planner import layers_on_gpu
from fathom_desktop.engine.types import LoadReport

FATHOM_REPO = "FractalAIResearch/Fathom-R1-14B"

STYLE = """
#welcomeTitle { font-size: 20px; font-weight: bold; }
#welcomeModel { font-weight: bold; }
#welcomeAbout, #welcomeGet { color: palette(placeholder-text); }
QPushButton#welcomePrompt {
    text-align: left; padding: 6px 10px;
    border: 1px solid palette(mid); border-radius: 6px;
}
QPushButton#welcomePrompt:hover { background: palette(alternate-base); }
"""

# Checked against the demo model through the whole stack (fathom-chat, the evaluation preset):
# each is answered with the right \boxed{} value (110, 52, 168).
DEMO_PROMPTS = (
    "Maya has 46 marbles. Leo has 18 more marbles than Maya. How many marbles do they have "
    "together?",
    "Sam buys 4 books for $12 each and pays with a $100 bill. How much change does he get?",
    "Priya reads 24 pages every day. How many pages does she read in a week?",
)
# Competition-style problems with one exact answer, the kind Fathom-R1-14B was trained on.
FATHOM_PROMPTS = (
    "How many positive divisors does 2025 have?",
    "Find the remainder when 3^100 is divided by 7.",
    "In how many ways can 8 people sit around a round table if two of them refuse to sit "
    "next to each other?",
)

DEMO_ABOUT = (
    "This is fathom-tiny, the built-in demo: a model of one million parameters trained only on "
    "grade-school arithmetic word problems (adding, subtracting, multiplying, dividing, making "
    "change). It reasons step by step inside <think>…</think>, shown folded above each answer, "
    "and puts the result in \\boxed{}. It cannot do anything else: general questions, "
    "conversation, code or harder mathematics get nonsense."
)
MODEL_ABOUT = (
    "A reasoning model: it thinks inside <think>…</think> (shown folded above each answer) "
    "before it answers, and puts a final result in \\boxed{}."
)
GET_FATHOM = (
    "Fathom-R1-14B, the model this app is made for, is on Hugging Face as "
    f"{FATHOM_REPO}. Get Fathom-R1-14B… downloads it, then makes, measures and loads the "
    "quantization level that suits your GPU; Open or download a model… opens a GGUF you have "
    "or converts a checkpoint folder."
)


def is_demo_model(path: Path) -> bool:
    """The demo's GGUF is named fathom-tiny-<fingerprint>-Q8_0.gguf (see demo.py)."""
    return path.name.startswith(f"{DEMO_NAME}-")


class WelcomeView(QFrame):
    """Shown by the transcript while the chat has no messages."""

    prompt_chosen = Signal(str)
    get_model_requested = Signal()
    get_fathom_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("welcome")
        self.setStyleSheet(STYLE)
        title = QLabel("Fathom Desktop", self)
        title.setObjectName("welcomeTitle")
        self.model_label = self._label("welcomeModel")
        self.about_label = self._label("welcomeAbout")
        self.try_label = self._label("welcomeTry")
        self.try_label.setText("Try one of these (it goes into the message box):")
        self.prompt_buttons = [QPushButton(self) for _ in range(3)]
        for button in self.prompt_buttons:
            button.setObjectName("welcomePrompt")
            button.setFlat(True)
            # A long prompt must not hold the transcript wider than a narrow window.
            button.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            button.clicked.connect(lambda _checked=False, b=button: self._choose(b))
        self.get_label = self._label("welcomeGet")
        self.get_label.setText(GET_FATHOM)
        self.get_fathom_button = QPushButton("Get Fathom-R1-14B…", self)
        self.get_fathom_button.clicked.connect(self.get_fathom_requested)
        self.get_button = QPushButton("Open or download a model…", self)
        self.get_button.clicked.connect(self.get_model_requested)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 24, 24, 24)
        layout.setSpacing(8)
        layout.addWidget(title)
        layout.addWidget(self.model_label)
        layout.addWidget(self.about_label)
        layout.addSpacing(8)
        layout.addWidget(self.try_label)
        for button in self.prompt_buttons:
            layout.addWidget(button)
        layout.addSpacing(8)
        layout.addWidget(self.get_label)
        get_row = QHBoxLayout()
        get_row.addWidget(self.get_fathom_button)
        get_row.addWidget(self.get_button)
        get_row.addStretch(1)
        layout.addLayout(get_row)
        self.show_no_model()

    def _label(self, name: str) -> QLabel:
        label = QLabel(self)
        label.setObjectName(name)
        label.setTextFormat(Qt.TextFormat.PlainText)
        label.setWordWrap(True)
        return label

    # -- what the window tells it --------------------------------------------------------------

    def show_no_model(self) -> None:
        self.model_label.setText("No model is loaded yet.")
        self._describe(demo=False, loaded=False)

    def show_loading(self, path: Path) -> None:
        name = "fathom-tiny, the built-in demo" if is_demo_model(path) else path.name
        self.model_label.setText(f"Loading {name}…")
        self._describe(demo=is_demo_model(path), loaded=True)

    def show_model(self, report: LoadReport) -> None:
        demo = is_demo_model(report.model_path)
        name = "fathom-tiny, the built-in demo" if demo else report.model_path.name
        on_gpu = report.n_gpu_layers if report.gpu_offload_supported else 0
        if report.file_type == "remote":  # engine/remote.py: a model served elsewhere
            self.model_label.setText(f"Model: {name} (on a server)")
        else:
            where = layers_on_gpu(on_gpu, report.n_layers)
            self.model_label.setText(f"Model: {name} ({report.file_type}, {where})")
        self._describe(demo=demo, loaded=True)

    def _describe(self, *, demo: bool, loaded: bool) -> None:
        self.about_label.setText(DEMO_ABOUT if demo else MODEL_ABOUT)
        self.about_label.setVisible(loaded)
        prompts = DEMO_PROMPTS if demo else FATHOM_PROMPTS
        for button, prompt in zip(self.prompt_buttons, prompts, strict=True):
            button.setText(prompt)
            button.setToolTip(f"Put this question in the message box:\n{prompt}")

    # -- reading it back -----------------------------------------------------------------------

    def prompts(self) -> list[str]:
        return [button.text() for button in self.prompt_buttons]

    def _choose(self, button: QPushButton) -> None:
        self.prompt_chosen.emit(button.text())
