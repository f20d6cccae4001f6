"""How prompts become token ids for plain-prompt (base) models: the BOS token a base model's
tokenizer starts texts with is kept, even when a long prompt is cut (a stand-in tokenizer)."""

from __future__ import annotations

from recall_merge.continual.scoring import encode, leading_bos


class PlainTokenizer:
    """Whitespace tokens → ids; adds BOS (id 2) when asked, like Gemma's base tokenizer."""

    chat_template = None
    bos_token_id = 2
    eos_token = "</s>"

    def __init__(self, adds_bos: bool = True) -> None:
        self.adds_bos = adds_bos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [10 + len(word) for word in text.split()]
        return {"input_ids": ([2] if add_special_tokens and self.adds_bos else []) + ids}


def test_plain_prompt_starts_with_bos_and_keeps_it_when_cut():
    tokenizer = PlainTokenizer()
    assert leading_bos(tokenizer) == [2]
    short = encode(tokenizer, "Word: good", "positive", 64)
    assert short.prompt_ids[0] == 2 and short.prompt_ids.count(2) == 1
    long = encode(tokenizer, "x " * 200, "positive", 20)
    assert long.prompt_ids[0] == 2
    assert len(long.prompt_ids) + len(long.answer_ids) == 20


def test_no_bos_where_the_tokenizer_adds_none_or_a_chat_template_writes_the_start():
    assert leading_bos(PlainTokenizer(adds_bos=False)) == []
    templated = PlainTokenizer()
    templated.chat_template = "{{ messages }}"
    assert leading_bos(templated) == []


def test_a_prompt_shorter_than_the_room_is_kept_whole():
    # between half the room and the room: a negative slice start once dropped its first tokens
    tokenizer = PlainTokenizer(adds_bos=False)
    prompt = " ".join("w" * (k % 5 + 1) for k in range(30))
    whole = tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]
    for max_length in (len(whole) + 3, 2 * len(whole) - 1, 2 * len(whole) + 5):
        assert encode(tokenizer, prompt, "positive", max_length).prompt_ids == whole
