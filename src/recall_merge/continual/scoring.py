"""Scoring a causal LM on a Task.

Classification and multiple choice: every choice is scored by its summed log-likelihood as the
assistant's reply to the prompt (the tokenizer's chat template when it has one), in length-sorted
batches; the prediction is the arg-max. Generation: greedy decoding, then exact match and token F1
(SQuAD normalisation), BLEU and chrF (sacrebleu, divided by 100 so every score lies in [0, 1];
chrF is the mean sentence chrF) and ROUGE-L (LCS F-measure over whitespace tokens). The task's
``metric`` picks the score that enters R.
"""

from __future__ import annotations

import collections
import copy
import functools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import RecallError, excerpt


@dataclass(frozen=True)
class Encoded:
    """Token ids of one prompt and one answer continuation (the answer may be empty)."""

    prompt_ids: list[int]
    answer_ids: list[int]


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before its answer: user turn + assistant header, or the raw prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def render_answer(tokenizer, prompt: str, answer: str) -> str:
    """The assistant's reply as the template writes it (answer + end-of-turn), after the prompt."""
    if getattr(tokenizer, "chat_template", None):
        head = render_prompt(tokenizer, prompt)
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            tokenize=False,
        )
        if full.startswith(head):
            return full[len(head):].rstrip("\n")
    return answer + (tokenizer.eos_token or "")


def encode(tokenizer, prompt: str, answer: str, max_length: int) -> Encoded:
    """Tokenise prompt and answer separately (the boundary is exact); keep the answer whole and
    cut the prompt from the left when the pair is longer than ``max_length``."""
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer_ids = (
        tokenizer(render_answer(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
        if answer else []
    )
    bos = leading_bos(tokenizer)
    answer_ids = answer_ids[: max_length - 1 - len(bos)]
    room = max_length - len(answer_ids) - len(bos)
    # max(…, 0): a prompt shorter than the room is kept whole (a negative start would count
    # from the end and drop its first tokens)
    return Encoded(bos + prompt_ids[max(len(prompt_ids) - room, 0):] if room > 0 else bos,
                   answer_ids)


def leading_bos(tokenizer) -> list[int]:
    """``[bos]`` for a plain-prompt tokenizer (no chat template) that starts every text with its
    BOS token when asked to (Gemma's base model needs it: without it, it answers noise); ``[]``
    otherwise, since a chat template writes its own start. Kept when a long prompt is cut."""
    if getattr(tokenizer, "chat_template", None) or tokenizer.bos_token_id is None:
        return []
    starts = tokenizer("", add_special_tokens=True)["input_ids"]
    return [tokenizer.bos_token_id] if starts[:1] == [tokenizer.bos_token_id] else []


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


@torch.no_grad()
def answer_log_likelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int,
                           max_length: int) -> list[float]:
    """Summed log p(answer | prompt) of each (prompt, answer) pair, batched by length."""
    encoded = [encode(tokenizer, prompt, answer, max_length) for prompt, answer in pairs]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k].prompt_ids) + len(encoded[k].answer_ids))
    scores = [0.0] * len(encoded)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        sequences = [encoded[k].prompt_ids + encoded[k].answer_ids for k in chunk]
        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(chunk), width), pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, width - 1, vocab)
        for row, k in enumerate(chunk):
            first = len(encoded[k].prompt_ids)
            answer = torch.tensor(encoded[k].answer_ids, device=device)
            positions = torch.arange(first - 1, first - 1 + len(answer), device=device)
            scores[k] = float(log_probs[row, positions, answer].sum())
    return scores


def choice_log_likelihoods(model, tokenizer, prompt: str, answers: Sequence[str],
                           max_length: int, prefix: PrefixCache | None = None) -> list[float]:
    """Summed log p(answer | prompt) of each answer, sharing one forward pass of the prompt.

    The prompt runs once with the KV cache on; the answers then run as one batch on top of the
    repeated cache. With 5-20 choices this is 5-20 times fewer tokens than scoring every
    (prompt, answer) pair in full — what makes label scoring of a 135M model bearable on a CPU.
    ``prefix``: the KV cache of the prompt's leading tokens, shared by a whole task (system prompt
    and instruction); only the rest of the prompt is then computed. One example of
    :func:`batch_choice_log_likelihoods`."""
    example = Example(prompt, answers[0], tuple(answers))
    return batch_choice_log_likelihoods(model, tokenizer, [example], max_length, prefix)[0]


@dataclass
class PrefixCache:
    """The KV cache of token ids that every prompt of a task starts with."""

    ids: list[int]
    cache: object
    cache_kwarg: str

    def covers(self, prompt_ids: list[int]) -> bool:
        # at least one token must remain, since the last prompt position's logits are needed
        return len(prompt_ids) > len(self.ids) and prompt_ids[: len(self.ids)] == self.ids


MIN_SHARED_PREFIX = 8


@torch.no_grad()
def shared_prefix_cache(model, tokenizer, prompts: Sequence[str], max_length: int) -> PrefixCache | None:
    """Run the longest token prefix shared by all prompts once (None when it is short)."""
    token_lists = [encode(tokenizer, prompt, "", max_length).prompt_ids for prompt in prompts]
    if len(token_lists) < 2:
        return None
    shared = token_lists[0]
    for ids in token_lists[1:]:
        length = 0
        while length < min(len(shared), len(ids)) and shared[length] == ids[length]:
            length += 1
        shared = shared[:length]
    shared = shared[: min(len(ids) for ids in token_lists) - 1]
    if len(shared) < MIN_SHARED_PREFIX:
        return None
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([shared], device=device), use_cache=True, logits_to_keep=1)
    kwarg = "cache" if "cache" in out else "past_key_values"
    return PrefixCache(shared, out.get("cache") or out.get("past_key_values"), kwarg)


def predict_choices(model, tokenizer, examples: Sequence[Example], batch_size: int,
                    max_length: int) -> list[str]:
    """The highest-likelihood choice of each example: the task's shared prompt prefix computed
    once, then ``batch_size`` examples at a time (:func:`batch_choice_log_likelihoods`)."""
    prefix = shared_prefix_cache(model, tokenizer, [ex.prompt for ex in examples], max_length)
    scores = batch_scores(model, tokenizer, examples, batch_size, max_length, prefix)
    return [max(zip(item_scores, _choices(ex), strict=True), key=lambda pair: pair[0])[1]
            for item_scores, ex in zip(scores, examples, strict=True)]


def batch_scores(model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 prefix: PrefixCache | None = None) -> list[list[float]]:
    """Every choice's summed log-likelihood for every example, in the examples' order. Batches
    hold examples with the same number of choices and similar prompt lengths (little padding)."""
    prompt_lengths = [len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
                      for ex in examples]
    order = sorted(range(len(examples)),
                   key=lambda k: (len(_choices(examples[k])), prompt_lengths[k]))
    scores: list[list[float]] = [[] for _ in examples]
    start = 0
    while start < len(order):
        count = len(_choices(examples[order[start]]))
        chunk = [order[start]]
        while (len(chunk) < max(batch_size, 1) and start + len(chunk) < len(order)
               and len(_choices(examples[order[start + len(chunk)]])) == count):
            chunk.append(order[start + len(chunk)])
        for k, item in zip(chunk, batch_choice_log_likelihoods(
                model, tokenizer, [examples[k] for k in chunk], max_length, prefix), strict=True):
            scores[k] = item
        start += len(chunk)
    return scores


@torch.no_grad()
def batch_choice_log_likelihoods(model, tokenizer, examples: Sequence[Example], max_length: int,
                                 prefix: PrefixCache | None = None) -> list[list[float]]:
    """:func:`choice_log_likelihoods` of several examples with the same number of choices in two
    forward passes: their prompts left-padded in one batch (each last prompt token at the same
    position, so only that position's logits are computed), then every (example, choice) answer
    on top of the repeated cache. Pads are masked out, so each score equals the one-example
    computation up to float rounding (tests/test_continual_run.py).

    Why not one example at a time: on 2 CPU cores a 135M model's forward over one ~40-token
    prompt is a small matrix product; 16 prompts at once score SmolLM2-135M's rt:sentiment items
    about twice as fast (measured in the benchmark's scoring; see docs/benchmarks.md)."""
    device = next(model.parameters()).device
    prompts: list[list[int]] = []
    answers: list[list[list[int]]] = []
    for ex in examples:
        encoded = [encode(tokenizer, ex.prompt, answer, max_length) for answer in _choices(ex)]
        longest = max(len(e.answer_ids) for e in encoded)
        prompts.append(encode(tokenizer, ex.prompt, "", max(max_length - longest, 1)).prompt_ids)
        answers.append([e.answer_ids for e in encoded])
    count, choices = len(examples), len(answers[0])
    if any(len(item) != choices for item in answers):
        raise ValueError("batch_choice_log_likelihoods needs examples with equal choice counts")
    start = len(prefix.ids) if prefix is not None and all(map(prefix.covers, prompts)) else 0
    rests = [ids[start:] for ids in prompts]
    width = max(len(rest) for rest in rests)
    ids = torch.full((count, width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((count, start + width), dtype=torch.long)
    mask[:, :start] = 1
    positions = torch.full((count, width), start, dtype=torch.long)
    for row, rest in enumerate(rests):
        offset = width - len(rest)  # left padding: the prompt's last token at column width - 1
        ids[row, offset:] = torch.tensor(rest)
        mask[row, start + offset:] = 1
        positions[row, offset:] = torch.arange(start, start + len(rest))
    cache_kwargs: dict = {}
    if start:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(count)
        cache_kwargs = {prefix.cache_kwarg: cache}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=positions.to(device), use_cache=True, logits_to_keep=1, **cache_kwargs)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (count, vocab)
    cache = out.get("cache") or out.get("past_key_values")  # renamed in transformers 5.x
    cache.batch_repeat_interleave(choices)  # rows: example 0's choices, example 1's, ...
    longest = max(len(answer) for item in answers for answer in item)
    answer_ids = torch.full((count * choices, longest), pad_id(tokenizer), dtype=torch.long)
    answer_mask = torch.zeros((count * choices, longest), dtype=torch.long)
    answer_positions = torch.zeros((count * choices, longest), dtype=torch.long)
    for row in range(count * choices):
        answer = answers[row // choices][row % choices]
        answer_ids[row, : len(answer)] = torch.tensor(answer)
        answer_mask[row, : len(answer)] = 1
        answer_positions[row] = torch.arange(len(prompts[row // choices]),
                                             len(prompts[row // choices]) + longest)
    full_mask = torch.cat([mask.repeat_interleave(choices, dim=0), answer_mask], dim=1)
    cache_kwarg = "cache" if "cache" in out else "past_key_values"
    rest = model(input_ids=answer_ids.to(device), attention_mask=full_mask.to(device),
                 position_ids=answer_positions.to(device), **{cache_kwarg: cache}).logits
    rest = torch.log_softmax(rest.float(), dim=-1)  # (count * choices, longest, vocab)
    scores: list[list[float]] = [[] for _ in examples]
    for row in range(count * choices):
        answer = answers[row // choices][row % choices]
        total = float(first[row // choices, answer[0]])
        if len(answer) > 1:
            steps = torch.arange(len(answer) - 1, device=rest.device)
            total += float(rest[row, steps, torch.tensor(answer[1:], device=rest.device)].sum())
        scores[row // choices].append(total)
    return scores


def _choices(example: Example) -> tuple[str, ...]:
    if not example.choices:
        raise RecallError(f"example {example.prompt[:40]!r} has no choices",
                          "give classification and multiple-choice examples a choices tuple")
    return example.choices


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], batch_size: int, max_new_tokens: int,
             max_length: int) -> list[str]:
    """Greedy completions (special tokens removed, whitespace stripped), batched, left-padded."""
    device = next(model.parameters()).device
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [encode(tokenizer, p, "", max(max_length - max_new_tokens, 8)).prompt_ids
                 for p in prompts[start:start + batch_size]]
        width = max(len(seq) for seq in chunk)
        ids = torch.full((len(chunk), width), pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
        )
        for row in generated[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs


# --- generation metrics ----------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, target: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(target))


def token_f1(prediction: str, target: str) -> float:
    """SQuAD token F1 between the normalised prediction and target."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, target: str) -> float:
    """ROUGE-L F-measure (β = 1) over lower-cased whitespace tokens."""
    pred, gold = prediction.lower().split(), target.lower().split()
    if not pred or not gold:
        return float(pred == gold)
    previous = [0] * (len(gold) + 1)
    for token in pred:
        current = [0]
        for k, gold_token in enumerate(gold):
            current.append(previous[k] + 1 if token == gold_token else max(previous[k + 1], current[k]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(gold)
    return 2 * precision * recall / (precision + recall)


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU divided by 100; each item may have several references."""
    try:
        import sacrebleu
    except ImportError:
        raise RecallError("BLEU needs the sacrebleu package", "pip install sacrebleu") from None
    width = max((len(refs) for refs in references), default=1)
    # sacrebleu wants reference streams of equal length: repeat an item's first reference.
    streams = [[refs[k] if k < len(refs) else refs[0] for refs in references] for k in range(width)]
    return sacrebleu.corpus_bleu(list(predictions), streams).score / 100.0


def item_scores(metric, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per item, the best of ``metric`` over the item's references (as in SQuAD)."""
    return [max(metric(p, ref) for ref in refs) for p, refs in zip(predictions, references, strict=True)]


def sentence_bleu(prediction: str, references: Sequence[str]) -> float:
    """sacrebleu sentence BLEU (its default smoothing) divided by 100: the per-item stand-in for
    corpus BLEU, which has no per-item value."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, list(references)).score / 100.0


@functools.lru_cache(maxsize=1)
def _chrf_metric():
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise RecallError("chrF needs the sacrebleu package", "pip install sacrebleu") from None
    return CHRF()


def sentence_chrf(prediction: str, references: Sequence[str]) -> float:
    """sacrebleu's sentence chrF (its defaults: character 6-grams, beta 2, no word n-grams)
    against the best of the references, divided by 100 so it lies in [0, 1]."""
    metric = _chrf_metric()
    return max(metric.sentence_score(prediction, [reference]).score
               for reference in references) / 100.0


def generation_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                      with_bleu: bool, with_chrf: bool = False) -> dict[str, float]:
    """Mean exact match, token F1 and ROUGE-L (each the best over an item's references, as in
    SQuAD); corpus BLEU when asked; mean sentence chrF when asked (so that it is the mean of
    the per-item scores its intervals are of)."""
    count = max(len(references), 1)
    scores = {name: sum(item_scores(metric, predictions, references)) / count
              for name, metric in GENERATION_METRICS.items()}
    if with_bleu:
        scores["bleu"] = corpus_bleu(predictions, references)
    if with_chrf:
        scores["chrf"] = sum(sentence_chrf(prediction, refs) for prediction, refs
                             in zip(predictions, references, strict=True)) / count
    return scores


GENERATION_METRICS = {"exact_match": exact_match, "f1": token_f1, "rougeL": rouge_l}


def item_metric(task: Task) -> str:
    """The per-item score kept for ``task`` (what its intervals are of): its own metric, except
    for corpus BLEU, whose per-item stand-in is sentence BLEU."""
    if task.kind in ("classification", "multiple_choice"):
        return "accuracy"
    metric = task.metric if task.metric in (*GENERATION_METRICS, "bleu", "chrf") else "exact_match"
    return "sentence_bleu" if metric == "bleu" else metric


def gold_answers(example: Example) -> tuple[str, ...]:
    """Every acceptable answer of an example (``references`` when the task gives several)."""
    return tuple(getattr(example, "references", ()) or ()) or (example.target,)


def score_task(model, tokenizer, task: Task, examples: Sequence[Example], batch_size: int,
               max_length: int, max_new_tokens: int) -> dict[str, Any]:
    """All scores of ``examples`` of ``task``; the key ``score`` holds the task's own metric,
    ``items`` the per-item scores behind it in the order of ``examples`` (0/1 for accuracy and
    exact match; sentence BLEU for a BLEU task, see :func:`item_metric`), and ``items_metric``
    which score those are."""
    if not examples:  # a score of 0 items would read as 0.0, a model that got everything wrong
        raise DataError(f"task {excerpt(task.name, 80)} has no items to score",
                        "give the task test (or dev) records, or leave it out")
    model.eval()
    per_item = item_metric(task)
    if task.kind in ("classification", "multiple_choice"):
        predictions = predict_choices(model, tokenizer, examples, batch_size, max_length)
        # a record may name several correct choices (its references); any of them counts
        correct = [int(p in gold_answers(ex)) for p, ex in zip(predictions, examples, strict=True)]
        scores: dict[str, Any] = {"accuracy": sum(correct) / len(examples)}
        items: list[float] | list[int] = correct
    else:
        predictions = generate(model, tokenizer, [ex.prompt for ex in examples], batch_size,
                               max_new_tokens, max_length)
        references = [gold_answers(ex) for ex in examples]
        scores = generation_scores(predictions, references, with_bleu=task.metric == "bleu",
                                   with_chrf=task.metric == "chrf")
        if per_item == "sentence_bleu":
            items = [sentence_bleu(p, refs) for p, refs in zip(predictions, references, strict=True)]
        elif per_item == "chrf":
            items = [sentence_chrf(p, refs) for p, refs in zip(predictions, references, strict=True)]
        else:
            items = item_scores(GENERATION_METRICS[per_item], predictions, references)
            if per_item == "exact_match":  # 0/1: kept as integers, compactly
                items = [int(value) for value in items]
    metric = task.metric if task.metric in scores else next(iter(scores))
    scores["score"] = scores[metric]
    scores["items"] = items
    scores["items_metric"] = per_item
    return scores


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> float:
    """exp of the mean next-token negative log-likelihood over every predicted token of ``texts``
    (raw text, no chat template; each text cut to its first ``max_length`` tokens)."""
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
        if len(ids) < 2:
            continue
        input_ids = torch.tensor([ids], device=device)
        logits = model(input_ids=input_ids).logits.float()[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="sum")
        total_nll += float(nll)
        total_tokens += len(ids) - 1
    if not total_tokens:
        raise RecallError("perplexity needs at least one text of two or more tokens",
                          "pass longer texts")
    return float(torch.exp(torch.tensor(total_nll / total_tokens)))
