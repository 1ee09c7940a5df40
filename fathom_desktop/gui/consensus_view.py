"""A consensus reply's samples side by side and their vote, live and afterwards.

One compact lane per sample (its state, reasoning tokens so far, then its boxed answer) and a
bar chart of the vote drawn with QPainter, with the share of samples that agree. Lanes and bars
are clickable: the reply's own reasoning pane and answer then show that sample. The view only
renders what it is given (`SampleProgress` batches while it runs, `SampleRecord`s at the end or
from the history); nothing here parses model text beyond reading the boxed value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFontMetrics,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.engine.answers import extract_boxed, normalize_answer
from fathom_desktop.engine.types import FinishReason, Phase
from fathom_desktop.gui.reasoning_pane import tokens_text
from fathom_desktop.gui.worker import SampleProgress
from fathom_desktop.history.samples import SampleRecord, VoteRecord, vote_labels, voted_for

# As many lanes side by side as the transcript's width holds at this width each (a wide window
# shows a vote of 64 in a few rows), never fewer than two nor more than eight.
LANE_MIN_WIDTH_PX = 150
LANE_COLUMNS_MIN, LANE_COLUMNS_MAX = 2, 8
LANE_PADDING_PX = 5
LANES_MAX_HEIGHT_PX = 236  # about four rows of lanes; more scroll
BAR_HEIGHT_PX = 18
BAR_GAP_PX = 5
CHART_LABEL_PX = 120
CHART_MAX_BARS = 8  # the rest of the values share one "other" bar
NO_ANSWER = "no boxed answer"


class LaneState(StrEnum):
    WAITING = "waiting"
    PROMPT = "reading the prompt"
    THINKING = "thinking"
    ANSWERING = "answering"
    DONE = "done"
    STOPPED = "stopped"
    LIMIT = "token limit"
    CONTEXT = "context full"
    CUT_OFF = "cut off"
    UNFINISHED = "unfinished"  # from the history: the reply ended before this sample did

    @property
    def running(self) -> bool:
        return self in (LaneState.PROMPT, LaneState.THINKING, LaneState.ANSWERING)


_PHASE_STATES = {
    Phase.PROMPT: LaneState.PROMPT,
    Phase.REASONING: LaneState.THINKING,
    Phase.ANSWER: LaneState.ANSWERING,
}
_FINISH_STATES = {
    FinishReason.STOP.value: LaneState.DONE,
    FinishReason.CANCELLED.value: LaneState.STOPPED,
    FinishReason.LENGTH.value: LaneState.LIMIT,
    FinishReason.CONTEXT.value: LaneState.CONTEXT,
    FinishReason.INTERRUPTED.value: LaneState.CUT_OFF,
}


def finished_state(record: SampleRecord) -> LaneState:
    if record.finish_reason is None:
        return LaneState.UNFINISHED
    return _FINISH_STATES.get(record.finish_reason, LaneState.DONE)


@dataclass
class SampleText:
    """Everything one sample wrote, as the view has received it."""

    index: int
    state: LaneState = LaneState.WAITING
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    record: SampleRecord | None = None

    def reasoning_text(self) -> str:
        if self.record is not None:
            return self.record.reasoning
        if len(self.reasoning) > 1:
            self.reasoning[:] = ["".join(self.reasoning)]
        return self.reasoning[0] if self.reasoning else ""

    def answer_text(self) -> str:
        if self.record is not None:
            return self.record.answer
        return "".join(self.answer)

    def boxed(self) -> str | None:
        if self.record is not None:
            return self.record.boxed
        return extract_boxed(self.answer_text()) if self.answer else None


# -- one lane -------------------------------------------------------------------------------------


class SampleLane(QWidget):
    """A sample at a glance: "#3 · thinking", "1,234 tokens", then "= 2500".

    Drawn by its own paintEvent: 64 lanes change many times a second, and a label per line (or
    a style sheet per state) would relayout or restyle the transcript on every change.
    """

    clicked = Signal(int)

    def __init__(self, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sampleLane")
        self.index = index
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Show this sample's reasoning and answer")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.state = LaneState.WAITING
        self.lines: tuple[str, str, str] = ("", "", "")
        self.selected = False
        self.winner = False
        self.show_sample(LaneState.WAITING, 0, None)

    def show_sample(self, state: LaneState, reasoning_tokens: int, boxed: str | None) -> None:
        if boxed is not None:
            answer = f"= {_elided(boxed, 18)}"
        elif state.running or state is LaneState.WAITING:
            answer = ""
        else:
            answer = NO_ANSWER
        tokens = tokens_text(reasoning_tokens) if state is not LaneState.WAITING else ""
        lines = (f"#{self.index + 1} · {state.value}", tokens, answer)
        if (state, lines) != (self.state, self.lines):
            self.state, self.lines = state, lines
            self.update()  # a repaint of this lane only; its size never changes

    @property
    def title(self) -> str:
        return self.lines[0]

    @property
    def tokens(self) -> str:
        return self.lines[1]

    @property
    def answer(self) -> str:
        return self.lines[2]

    def set_selected(self, selected: bool) -> None:
        if selected != self.selected:
            self.selected = selected
            self.update()

    def set_winner(self, winner: bool) -> None:
        if winner != self.winner:
            self.winner = winner
            self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(150, 3 * QFontMetrics(self.font()).lineSpacing() + 2 * LANE_PADDING_PX)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(80, self.sizeHint().height())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        palette = self.palette()
        accent = palette.color(QPalette.ColorRole.Highlight)
        frame = QRectF(self.rect()).adjusted(1, 1, -1, -1)
        if self.winner:
            tint = QColor(accent)
            tint.setAlpha(40)
            painter.fillRect(frame, tint)
        pen = QPen(accent if self.selected else palette.color(QPalette.ColorRole.Mid))
        pen.setWidthF(2.0 if self.selected else 1.0)
        painter.setPen(pen)
        painter.drawRoundedRect(frame, 4, 4)
        colour = palette.color(QPalette.ColorRole.Text)
        if self.state is LaneState.WAITING:
            colour = palette.color(QPalette.ColorRole.PlaceholderText)
        painter.setPen(colour)
        metrics = QFontMetrics(self.font())
        width = self.width() - 2 * LANE_PADDING_PX
        for row, line in enumerate(self.lines):
            top = LANE_PADDING_PX + row * metrics.lineSpacing()
            painter.drawText(
                QRectF(LANE_PADDING_PX, top, width, metrics.lineSpacing()),
                int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                metrics.elidedText(line, Qt.TextElideMode.ElideRight, width),
            )
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.index)
        super().mousePressEvent(event)


# -- the vote -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    key: str | None  # the normalized value; None: samples that boxed nothing
    label: str
    count: int
    winner: bool = False


class VoteChart(QWidget):
    """Horizontal bars, one per answer value, most votes first; the winner's in the accent."""

    bar_clicked = Signal(object)  # the bar's normalized value (None: no boxed answer)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("voteChart")
        self.bars: list[Bar] = []
        self.total = 0  # samples finished (or, at the end, samples that took part)
        self.pending = 0  # samples still running or waiting
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Click a bar to show a sample that gave this answer")

    def set_votes(self, bars: list[Bar], total: int, pending: int) -> None:
        if (bars, total, pending) == (self.bars, self.total, self.pending):
            return
        self.bars, self.total, self.pending = bars, total, pending
        self.updateGeometry()
        self.update()

    def agreement(self) -> float:
        """Share of the finished samples behind the leading value (0 before any boxed one)."""
        leading = next((bar for bar in self.bars if bar.key is not None), None)
        if leading is None or not self.total:
            return 0.0
        return leading.count / self.total

    def caption(self) -> str:
        if not self.total:
            return "Vote: no sample has finished yet"
        leading = next((bar for bar in self.bars if bar.key is not None), None)
        if leading is None:
            text = f"Vote: none of {self.total} boxed an answer"
        else:
            text = (
                f"Vote: {leading.count} of {self.total} agree ({self.agreement():.0%})"
                f" on {_elided(leading.label, 24)}"
            )
        if self.pending:
            text += f" · {self.pending} still running"
        return text

    def bar_rect(self, row: int) -> QRectF:
        """Where bar `row` is drawn (its full row, label included, for clicks)."""
        top = self._caption_height() + row * (BAR_HEIGHT_PX + BAR_GAP_PX)
        return QRectF(0, top, self.width(), BAR_HEIGHT_PX)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        rows = max(1, len(self.bars))
        height = self._caption_height() + rows * (BAR_HEIGHT_PX + BAR_GAP_PX)
        return QSize(360, height)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return self.sizeHint()

    def _caption_height(self) -> int:
        return QFontMetrics(self.font()).height() + 6

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text_colour = palette.color(QPalette.ColorRole.Text)
        accent = palette.color(QPalette.ColorRole.Highlight)
        other = palette.color(QPalette.ColorRole.Mid)
        metrics = QFontMetrics(self.font())
        painter.setPen(text_colour)
        painter.drawText(
            QRectF(0, 0, self.width(), self._caption_height()),
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            self.caption(),
        )
        count_width = metrics.horizontalAdvance(" 64 (100%) ")
        span = max(10.0, self.width() - CHART_LABEL_PX - count_width - 8)
        scale = max(self.total, 1)
        for row, bar in enumerate(self.bars):
            rect = self.bar_rect(row)
            painter.setPen(text_colour if bar.key is not None else other.darker(130))
            label = metrics.elidedText(bar.label, Qt.TextElideMode.ElideRight, CHART_LABEL_PX - 6)
            painter.drawText(
                QRectF(0, rect.top(), CHART_LABEL_PX - 6, rect.height()),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                label,
            )
            width = span * bar.count / scale
            fill = accent if bar.winner else other
            painter.fillRect(QRectF(CHART_LABEL_PX, rect.top() + 2, width, rect.height() - 4), fill)
            painter.setPen(text_colour)
            share = bar.count / self.total if self.total else 0.0
            painter.drawText(
                QRectF(CHART_LABEL_PX + width + 4, rect.top(), count_width, rect.height()),
                int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                f"{bar.count} ({share:.0%})",
            )
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        for row, bar in enumerate(self.bars):
            if self.bar_rect(row).contains(event.position()):
                self.bar_clicked.emit(bar.key)
                return
        super().mousePressEvent(event)


def tally(samples: list[SampleText], winner_key: str | None = None) -> tuple[list[Bar], int]:
    """The bars for the finished samples, most votes first (ties: first seen), and their count.

    Before the end the leading value is drawn as the winner; at the end, the vote's own winner.
    """
    finished = [s for s in samples if s.record is not None]
    records = [s.record for s in finished if s.record is not None]
    labels = vote_labels(records)
    counts: dict[str, int] = {}
    boxless = 0
    for record in records:
        key = voted_for(record)
        if key is None:
            boxless += 1
        else:
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])  # stable: first seen wins ties
    leader = winner_key if winner_key is not None else (ranked[0][0] if ranked else None)
    bars = [Bar(key, labels[key], count, key == leader) for key, count in ranked]
    if len(bars) > CHART_MAX_BARS:
        rest = bars[CHART_MAX_BARS - 1 :]
        bars = bars[: CHART_MAX_BARS - 1]
        bars.append(Bar("", f"{len(rest)} others", sum(bar.count for bar in rest)))
    if boxless:
        bars.append(Bar(None, NO_ANSWER, boxless))
    return bars, len(records)


# -- the whole view -------------------------------------------------------------------------------


class ConsensusView(QFrame):
    """The lanes and the vote of one consensus reply; `sample_selected` when one is picked."""

    sample_selected = Signal(int)

    def __init__(self, requested: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("consensusView")
        self.requested = requested
        self.samples: list[SampleText] = []
        self.lanes: list[SampleLane] = []
        self.columns = 4  # until the first resize says how wide the transcript is
        self.selected = 0
        self.winner: int | None = None
        self.vote: VoteRecord | None = None
        self.running = True

        self.header = QLabel(self)
        self.header.setObjectName("consensusHeader")
        self.header.setTextFormat(Qt.TextFormat.PlainText)
        self.header.setWordWrap(True)
        self._grid_host = QWidget(self)
        self._grid = QGridLayout(self._grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(4)
        self.lane_area = QScrollArea(self)
        self.lane_area.setWidgetResizable(True)
        self.lane_area.setFrameShape(QFrame.Shape.NoFrame)
        self.lane_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.lane_area.setWidget(self._grid_host)
        self.chart = VoteChart(self)
        self.chart.bar_clicked.connect(self._on_bar)
        self.showing = QLabel(self)
        self.showing.setObjectName("consensusShowing")
        self.showing.setTextFormat(Qt.TextFormat.PlainText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.setSpacing(4)
        layout.addWidget(self.header)
        layout.addWidget(self.lane_area)
        layout.addWidget(self.chart)
        layout.addWidget(self.showing)
        for index in range(requested):
            self._add_lane(index)
        self._fit_lanes()
        self._refresh()

    # -- filling ------------------------------------------------------------------------------

    def update_samples(self, progress: tuple[SampleProgress, ...]) -> None:
        """A batch of live progress (only the samples that moved on)."""
        for news in progress:
            sample = self._sample(news.index)
            if news.reasoning:
                sample.reasoning.append(news.reasoning)
            if news.answer:
                sample.answer.append(news.answer)
            sample.reasoning_tokens = news.reasoning_tokens
            sample.answer_tokens = news.answer_tokens
            if news.finished is not None:
                sample.record = news.finished
                sample.state = finished_state(news.finished)
            else:
                sample.state = _PHASE_STATES[news.phase]
            self._show_lane(sample)
        self._refresh()

    def finish(
        self, records: tuple[SampleRecord, ...] | list[SampleRecord], vote: VoteRecord | None
    ) -> None:
        """The run ended (or came from the history): every sample as kept, and the vote."""
        self.running = False
        self.vote = vote
        for record in records:
            sample = self._sample(record.index)
            sample.record = record
            sample.reasoning_tokens = record.reasoning_tokens
            sample.answer_tokens = record.answer_tokens
            sample.state = finished_state(record)
            sample.reasoning, sample.answer = [], []  # the record holds the text now
        for sample in self.samples:
            if sample.record is None and sample.state is not LaneState.WAITING:
                # Started, but the reply ended before it did and nothing of it was kept.
                sample.state = LaneState.UNFINISHED
            self._show_lane(sample)
        # With nothing boxed there is no winner to point at (the reply shows the first sample).
        winner = vote.winner if vote is not None and vote.answer is not None else None
        self.winner = winner if winner is not None and winner < len(self.samples) else None
        for lane in self.lanes:
            lane.set_winner(lane.index == self.winner)
        self._refresh()

    # -- choosing a sample ----------------------------------------------------------------------

    def select(self, index: int) -> None:
        if not 0 <= index < len(self.samples):
            return
        self.selected = index
        for lane in self.lanes:
            lane.set_selected(lane.index == index)
        self._refresh_showing()
        self.sample_selected.emit(index)

    def _on_bar(self, key: str | None) -> None:
        """The first sample with that value, or the next one after the shown sample."""
        matching = [s.index for s in self.samples if s.record is not None and _key(s) == key]
        if not matching:
            return
        later = [i for i in matching if i > self.selected]
        self.select(later[0] if self.selected in matching and later else matching[0])

    # -- showing ------------------------------------------------------------------------------

    def _sample(self, index: int) -> SampleText:
        while index >= len(self.samples):
            self._add_lane(len(self.samples))
            self._fit_lanes()
        return self.samples[index]

    def _add_lane(self, index: int) -> None:
        self.samples.append(SampleText(index))
        lane = SampleLane(index, self._grid_host)
        lane.clicked.connect(self.select)
        lane.set_selected(index == self.selected)
        self.lanes.append(lane)
        self._grid.addWidget(lane, index // self.columns, index % self.columns)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        spacing = self._grid.spacing()
        fits = (event.size().width() + spacing) // (LANE_MIN_WIDTH_PX + spacing)
        columns = max(LANE_COLUMNS_MIN, min(LANE_COLUMNS_MAX, fits))
        if columns == self.columns:
            return
        self.columns = columns
        for lane in self.lanes:
            self._grid.removeWidget(lane)
        for index, lane in enumerate(self.lanes):
            self._grid.addWidget(lane, index // columns, index % columns)
        for column in range(LANE_COLUMNS_MAX):  # equal widths, the unused columns none
            self._grid.setColumnStretch(column, 1 if column < columns else 0)
        self._fit_lanes()

    def _fit_lanes(self) -> None:
        rows = (len(self.lanes) + self.columns - 1) // self.columns
        row_height = self.lanes[0].sizeHint().height() if self.lanes else 0
        wanted = rows * row_height + max(0, rows - 1) * self._grid.spacing() + 2
        self.lane_area.setFixedHeight(min(wanted, LANES_MAX_HEIGHT_PX))

    def _show_lane(self, sample: SampleText) -> None:
        self.lanes[sample.index].show_sample(sample.state, sample.reasoning_tokens, sample.boxed())

    def _refresh(self) -> None:
        winner_key = None
        if not self.running and self.vote is not None and self.vote.answer is not None:
            winner_key = normalize_answer(self.vote.answer)
        bars, finished = tally(self.samples, winner_key)
        pending = sum(1 for s in self.samples if s.record is None) if self.running else 0
        self.chart.set_votes(bars, finished, pending)
        running = sum(1 for s in self.samples if s.state.running)
        if self.running:
            parts = [f"Consensus ×{self.requested}", f"{finished} of {self.requested} finished"]
            if running:
                parts.append(f"{running} decoding at once")
        else:
            kept = len([s for s in self.samples if s.record is not None])
            parts = [f"Consensus ×{self.requested}"]
            if kept < self.requested:
                parts.append(f"{kept} of {self.requested} samples ran")
            if self.vote is not None:
                parts.append(_parallel_text(self.vote))
        self.header.setText(" · ".join(parts))
        self._refresh_showing()

    def _refresh_showing(self) -> None:
        note = " (the vote's winner)" if self.selected == self.winner else ""
        hint = "" if self.running else " · click a lane or a bar to show another"
        self.showing.setText(f"Showing sample {self.selected + 1}{note}{hint}")


def _parallel_text(vote: VoteRecord) -> str:
    if vote.parallel <= 1:
        return "one sample at a time"
    return f"up to {vote.parallel} decoded at once"


def _key(sample: SampleText) -> str | None:
    boxed = sample.boxed()
    return normalize_answer(boxed) if boxed is not None else None


def _elided(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
