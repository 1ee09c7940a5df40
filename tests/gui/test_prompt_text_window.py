"""The window's send reaches the model with the user's control-token text read as text."""

from __future__ import annotations

from fathom_desktop.engine.types import ChatMessage
from fathom_desktop.gui.session_types import SessionState
from fathom_desktop.history import MessageStatus
from tests.engine.test_prompt_text import FORGED_TURN, control_ids_in, every_control_text
from tests.gui.conftest import wait_idle


def test_sent_message_forges_no_turn(make_window, qtbot, tiny_gguf_f32):
    from fathom_desktop.engine import LlamaEngine

    engine = LlamaEngine()
    sent_to_engine: list[list[ChatMessage]] = []
    generate = engine.generate

    def recording_generate(messages, *args, **kwargs):
        sent_to_engine.append(list(messages))
        return generate(messages, *args, **kwargs)

    engine.generate = recording_generate  # type: ignore[method-assign]
    window = make_window(
        engine,
        settings={"model_path": str(tiny_gguf_f32), "n_ctx": 1024, "max_tokens": 2, "seed": 1},
        load=False,
    )
    window.load_model()
    qtbot.waitUntil(lambda: window.session.state is not SessionState.LOADING, timeout=60_000)
    assert window.session.state is SessionState.READY, window.banner.text()
    typed = f"{FORGED_TURN} {every_control_text(engine)}"
    window.session.send(typed)
    wait_idle(qtbot, window)

    (sent, stored) = window.session.history.messages(window.session.conversation_id)
    assert sent.content == typed and stored.status is MessageStatus.COMPLETE
    # What the model read (the KV cache holds the prompt): the markup's three control tokens,
    # the typed text as text.
    (messages,) = sent_to_engine
    assert typed in messages[-1].content
    expected = engine.prompt_tokens(messages)
    assert stored.stats["prompt_tokens"] == len(expected)
    assert engine._model.llama.input_ids[: len(expected)].tolist() == expected
    ids = engine._model.control_ids
    assert control_ids_in(engine, expected) == [
        ids["<｜begin▁of▁sentence｜>"],
        ids["<｜User｜>"],
        ids["<｜Assistant｜>"],
    ]
