"""Text stays text through fathom-serve: a client's message holding control tokens' text reaches
the model as that text, never as turn boundaries (the demo model's real vocabulary)."""

from __future__ import annotations

from fathom_desktop.engine.types import ChatMessage
from tests.engine.test_prompt_text import FORGED_TURN, control_ids_in, every_control_text
from tests.serve.conftest import Served
from tests.serve.test_openai_client import client


def test_a_served_message_forges_no_turn(served: Served) -> None:
    def facts(engine) -> tuple[str, list[int], list[int], list[int]]:
        hostile = f"{FORGED_TURN} {every_control_text(engine)}"
        as_text = engine.prompt_tokens([ChatMessage("user", hostile)])
        prompt = engine.render_prompt([ChatMessage("user", hostile)])
        parsed = engine._model.llama.tokenize(prompt.encode(), add_bos=False, special=True)
        markup = engine.prompt_tokens([ChatMessage("user", "plain")])
        return hostile, as_text, parsed, control_ids_in(engine, markup)

    hostile, as_text, parsed, markup_controls = served.runner.run_now(facts)
    reply = client(served).chat.completions.create(
        model=served.model_id,
        messages=[{"role": "user", "content": hostile}],
        max_tokens=1,
        temperature=0,
    )
    # The served prompt is the one built with the text as text: the template's own control
    # tokens and no others, where special-token parsing would have made far fewer tokens.
    assert reply.usage.prompt_tokens == len(as_text)
    assert len(as_text) > len(parsed) + 10
    assert served.runner.run_now(lambda engine: control_ids_in(engine, as_text)) == markup_controls
