"""A small duplicate-question set written for fastmtl, and hashed character n-grams to feed it to
a text encoder.

No question-pair set (QQP, MRPC, PAWS) is available offline, so this one is generated from
paraphrase templates written by hand for the project: each question *identity* is an intent
(asking a price, the weather, how to learn something, ...) with a slot value ("a bike",
"Paris"), and each of its questions is one of the intent's paraphrases ("How much does a bike
cost?" = "What is the price of a bike?"). Near misses come for free: the same slot under another
intent ("What time is it in Paris?" is not "What is the weather like in Paris?"), the same
intent with another slot ("How old is your dog?" is not "How old is the universe?"), and "How
old are you?" against "How old is your brother?". 10 intents, 50 identities, 245 questions.
"""

import zlib

import torch

__all__ = ["INTENTS", "hashed_ngrams", "question_set"]

# intent -> (paraphrase templates, slot values); "{x}" is the slot; no slot: one identity.
INTENTS = {
    "age": (
        [
            "How old are you?",
            "What is your age?",
            "What's your age?",
            "How many years old are you?",
            "Tell me your age.",
            "May I ask how old you are?",
        ],
        [""],
    ),
    "name": (
        [
            "What is your name?",
            "What should I call you?",
            "Tell me your name.",
            "What are you called?",
            "What's your name?",
        ],
        [""],
    ),
    "age_of": (
        ["How old is {x}?", "What is the age of {x}?", "What age is {x}?", "How many years old is {x}?"],
        ["your dog", "your cat", "the Eiffel Tower", "the universe", "your brother", "the internet"],
    ),
    "price": (
        [
            "How much does a {x} cost?",
            "What is the price of a {x}?",
            "How expensive is a {x}?",
            "What does a {x} cost?",
            "How much would I pay for a {x}?",
        ],
        ["bike", "laptop", "car", "phone", "guitar", "coffee"],
    ),
    "learn": (
        [
            "How can I learn {x}?",
            "What is the best way to learn {x}?",
            "How do I get started with {x}?",
            "Where should I begin learning {x}?",
            "What's the fastest way to learn {x}?",
        ],
        ["Spanish", "Python", "chess", "math", "Japanese", "the piano"],
    ),
    "weather": (
        [
            "What is the weather like in {x}?",
            "How is the weather in {x} today?",
            "What's the forecast for {x}?",
            "Is it sunny in {x} right now?",
            "What weather should I expect in {x}?",
        ],
        ["London", "Paris", "Tokyo", "Berlin", "Cairo", "Lima"],
    ),
    "travel": (
        [
            "How do I get to {x}?",
            "What is the best way to travel to {x}?",
            "How can I reach {x}?",
            "Which route should I take to {x}?",
            "How should I go to {x}?",
        ],
        ["London", "Paris", "Tokyo", "Berlin", "Cairo", "Lima"],
    ),
    "time": (
        [
            "What time is it in {x}?",
            "What is the current time in {x}?",
            "Tell me the time in {x}.",
            "What's the local time in {x}?",
            "What hour is it in {x} now?",
        ],
        ["London", "Paris", "Tokyo", "Berlin", "Cairo", "Lima"],
    ),
    "meaning": (
        [
            "What does {x} mean?",
            "What is the meaning of {x}?",
            "Can you define {x}?",
            "What is the definition of {x}?",
            "Explain the word {x}.",
        ],
        ["serendipity", "entropy", "irony", "democracy", "inflation", "gravity"],
    ),
    "fix": (
        [
            "How do I fix a {x}?",
            "How can I repair a {x}?",
            "What should I do about a broken {x}?",
            "How do you mend a {x}?",
            "What's the way to fix a {x}?",
        ],
        ["flat tire", "leaky faucet", "cracked screen", "squeaky door", "slow computer", "broken zipper"],
    ),
}


def question_set() -> "tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]":
    """Every question: ``(texts, identities [Q], intents [Q] (index into INTENTS), template
    numbers [Q])``."""
    texts, identities, intents, templates = [], [], [], []
    identity = 0
    for i, (phrasings, slots) in enumerate(INTENTS.values()):
        for slot in slots:
            for t, phrase in enumerate(phrasings):
                texts.append(phrase.replace("{x}", slot))
                identities.append(identity)
                intents.append(i)
                templates.append(t)
            identity += 1
    return texts, torch.tensor(identities), torch.tensor(intents), torch.tensor(templates)


def hashed_ngrams(texts: list, buckets: int = 1 << 13, max_len: int = 160) -> torch.Tensor:
    """``[Q, max_len]`` int64: each text's words and character trigrams (of ``#word#``, lower
    case, punctuation dropped) hashed (CRC32) into ``[1, buckets)``, 0 padding."""
    out = torch.zeros(len(texts), max_len, dtype=torch.long)
    for row, text in enumerate(texts):
        words = "".join(ch.lower() if ch.isalnum() or ch == "'" else " " for ch in text).split()
        grams = ["w:" + w for w in words]
        for w in words:
            padded = f"#{w}#"
            grams += [padded[i : i + 3] for i in range(len(padded) - 2)]
        ids = [1 + zlib.crc32(g.encode()) % (buckets - 1) for g in grams][:max_len]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
