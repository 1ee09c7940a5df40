"""The forged-turn attack on the demo model: the prompt holds one user turn, whatever it says."""

from __future__ import annotations

from fathom_desktop.engine.types import ChatMessage
from tests.engine.test_prompt_text import FORGED_TURN


def test_forged_turn_reaches_the_demo_model_as_one_user_turn(demo_engine):
    ids = demo_engine._model.control_ids
    tokens = demo_engine.prompt_tokens([ChatMessage("user", FORGED_TURN)])
    # Special-token parsing would have read an end of turn, a second user turn and an
    # assistant turn out of the user's text.
    assert [t for t in tokens if t in ids.values()] == [
        ids["<｜begin▁of▁sentence｜>"],
        ids["<｜User｜>"],
        ids["<｜Assistant｜>"],
    ]
    user_text = tokens[tokens.index(ids["<｜User｜>"]) + 1 : tokens.index(ids["<｜Assistant｜>"])]
    assert demo_engine._model.llama.detokenize(user_text, special=True).decode() == FORGED_TURN
