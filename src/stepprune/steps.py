"""Segmentation of the reasoning into steps: exact token spans of the generated ids.

Steps are found on the tokens themselves (never by re-tokenising substrings, which does not match
joint tokenisation). Every token of the reasoning belongs to exactly one step or is a separator
(whitespace-only tokens between steps); the answer section is never a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from stepprune.schema import Step

# Steps shorter than this (non-space characters) are merged into the next step: a lone "Wait,"
# or "**Step 2**" paragraph carries no reasoning of its own.
DEFAULT_MIN_STEP_CHARS = 10
SEGMENTERS = ("paragraph", "line", "sentence", "markers")
# Words that open a new thought in reasoning traces (TRAAC splits steps at such markers).
DISCOURSE_MARKERS = (
    "Wait",
    "But",
    "So",
    "Therefore",
    "Thus",
    "Hmm",
    "Alternatively",
    "However",
    "Let me",
    "Now",
    "Then",
    "Okay",
    "First",
    "Next",
    "Finally",
)


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Decoded text of each token alone.

    A byte-level token may hold part of a multi-byte character and decode to U+FFFD; that does not
    matter here because only whitespace and newlines (ASCII) are inspected.
    """
    return tokenizer.batch_decode([[i] for i in ids])


def paragraph_breaks(texts: list[str]) -> list[bool]:
    """``breaks[i]`` is True when a paragraph ends after token ``i``."""
    breaks = []
    for i, text in enumerate(texts):
        following = texts[i + 1] if i + 1 < len(texts) else ""
        breaks.append("\n\n" in text or (text.endswith("\n") and following.startswith("\n")))
    return breaks


def line_breaks(texts: list[str]) -> list[bool]:
    """``breaks[i]`` is True when a line ends in token ``i``."""
    return ["\n" in text for text in texts]


def block_breaks(texts: list[str]) -> list[bool]:
    """Paragraph breaks; a text without any blank line breaks at its line ends instead. Some
    models (SmolLM2) write one line per step and never a blank line: read as paragraphs, their
    whole reasoning would be one step."""
    breaks = paragraph_breaks(texts)
    return breaks if any(breaks) else line_breaks(texts)


class BlockBreakWatcher:
    """``block_breaks`` for text that arrives one token at a time (online generation).

    ``feed`` says whether a block ends with this token. Before the first blank line every line
    end counts; from then on only blank lines do, also when the model writes one as two
    ``"\\n"`` tokens (the break is reported at the second).
    """

    def __init__(self) -> None:
        self.previous = ""
        self.seen_blank_line = False

    def feed(self, text: str) -> bool:
        blank = "\n\n" in text or (self.previous.endswith("\n") and text.startswith("\n"))
        self.previous = text
        self.seen_blank_line |= blank
        return blank or (not self.seen_blank_line and "\n" in text)


def _sentence_breaks(texts: list[str]) -> list[bool]:
    """Block breaks, plus a break after a token ending a sentence (``.?!`` followed by a
    token that starts with whitespace: "3.5" or "e.g.x" do not end sentences)."""
    breaks = block_breaks(texts)
    for i, text in enumerate(texts[:-1]):
        following = texts[i + 1]
        if text.rstrip().endswith((".", "?", "!")) and (
            following[:1].isspace() or text[-1].isspace()
        ):
            breaks[i] = True
    return breaks


def _marker_breaks(texts: list[str]) -> list[bool]:
    """Block breaks, plus a break before a discourse marker that starts a word after a
    sentence end or a line break (word boundary on both sides: "Sow" and "Sorry" do not match)."""
    breaks = block_breaks(texts)
    for i in range(len(texts) - 1):
        before = texts[i].rstrip(" ")
        if not before or not (before.endswith(("\n", ".", "?", "!", ":")) or breaks[i]):
            continue
        ahead = "".join(texts[i + 1 : i + 5]).lstrip()
        for marker in DISCOURSE_MARKERS:
            rest = ahead[len(marker) : len(marker) + 1]
            if ahead.startswith(marker) and not rest.isalpha():
                breaks[i] = True
                break
    return breaks


def _chunk_spans(breaks: list[bool]) -> list[tuple[int, int]]:
    """Split ``range(len(breaks))`` into chunks ending at each break."""
    spans, start = [], 0
    for i, is_break in enumerate(breaks):
        if is_break:
            spans.append((start, i + 1))
            start = i + 1
    if start < len(breaks):
        spans.append((start, len(breaks)))
    return spans


def _strip_blank(texts: list[str], start: int, end: int) -> tuple[int, int] | None:
    """Narrow ``[start, end)`` to its first and last non-blank token; None if all blank."""
    while start < end and not texts[start].strip():
        start += 1
    while end > start and not texts[end - 1].strip():
        end -= 1
    return (start, end) if start < end else None


def _merge_short(
    spans: list[tuple[int, int]], texts: list[str], min_chars: int
) -> list[tuple[int, int]]:
    """Merge spans with fewer than ``min_chars`` non-space characters into the next span (the
    last one into the previous), so the merged span also covers the separator between them."""

    def size(span: tuple[int, int]) -> int:
        return sum(len("".join(texts[i].split())) for i in range(*span))

    merged: list[tuple[int, int]] = []
    pending: tuple[int, int] | None = None
    for span in spans:
        if pending is not None:
            span = (pending[0], span[1])
            pending = None
        if size(span) < min_chars:
            pending = span
        else:
            merged.append(span)
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], pending[1])
        else:
            merged.append(pending)
    return merged


_FINDERS = {
    "paragraph": block_breaks,
    "line": line_breaks,
    "sentence": _sentence_breaks,
    "markers": _marker_breaks,
}


def segment_steps(
    tokenizer: PreTrainedTokenizerBase,
    all_ids: Sequence[int],
    start: int,
    end: int,
    min_chars: int = DEFAULT_MIN_STEP_CHARS,
    mode: str = "paragraph",
) -> list[Step]:
    """Split the reasoning ``all_ids[start:end]`` into steps.

    ``mode``: ``paragraph`` (a step ends at a blank line, or at every line end when the
    reasoning has no blank line: ``block_breaks``), ``line`` (at every line end), ``sentence``
    (paragraphs, also split at sentence ends), or ``markers`` (paragraphs, also split before
    discourse markers such as "Wait" or "Therefore" that open a sentence or line). Leading and
    trailing whitespace-only tokens of a step are separators; short steps are merged forward.

    Returns:
        Steps with absolute spans into ``all_ids`` in order, non-overlapping, with
        ``importance`` unset.
    """
    if mode not in _FINDERS:
        raise ValueError(f"segmenter {mode!r}: choose from {', '.join(SEGMENTERS)}")
    region = list(all_ids[start:end])
    spans = _spans(token_texts(tokenizer, region), min_chars, mode)
    return [
        Step(index=i, start=start + a, end=start + b, text=tokenizer.decode(region[a:b]))
        for i, (a, b) in enumerate(spans)
    ]


def _spans(texts: list[str], min_chars: int, mode: str) -> list[tuple[int, int]]:
    """Step spans (relative to the region) from the tokens' texts."""
    stripped = [s for c in _chunk_spans(_FINDERS[mode](texts)) if (s := _strip_blank(texts, *c))]
    return _merge_short(stripped, texts, min_chars)


def attach_labels(steps: list[Step], labels: list[str] | None) -> None:
    """Copy planted-step labels onto the steps when segmentation found one step per label."""
    if labels is not None and len(labels) == len(steps):
        for step, label in zip(steps, labels, strict=True):
            step.label = label


@dataclass(frozen=True)
class Segmenter:
    """How reasoning is split into steps: ``kind`` (paragraph, line, sentence, markers) and the
    minimum non-space characters of a step (shorter ones merge into the next)."""

    kind: str = "paragraph"
    min_chars: int = DEFAULT_MIN_STEP_CHARS

    def __post_init__(self) -> None:
        if self.kind not in SEGMENTERS:
            raise ValueError(f"--segmenter {self.kind!r}: choose from {', '.join(SEGMENTERS)}")

    def __call__(
        self, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], start: int, end: int
    ) -> list[Step]:
        return segment_steps(tokenizer, ids, start, end, self.min_chars, self.kind)


class IncrementalSegmenter:
    """``Segmenter`` for a sequence that only grows (online generation): the same steps as
    ``segmenter(tokenizer, ids, start, end)`` at every call, but each token is decoded once
    (its text is kept from the previous calls) and each step's text once per span. ``ids`` must
    extend the previous call's (a call that does not starts afresh)."""

    def __init__(self, segmenter: Segmenter, tokenizer: PreTrainedTokenizerBase) -> None:
        self.segmenter, self.tokenizer = segmenter, tokenizer
        self.start: int | None = None
        self.texts: list[str] = []
        self.step_texts: dict[tuple[int, int], str] = {}

    def __call__(self, ids: Sequence[int], start: int, end: int) -> list[Step]:
        if self.start != start or end < start + len(self.texts):
            self.start, self.texts, self.step_texts = start, [], {}  # not an extension: restart
        self.texts += token_texts(self.tokenizer, ids[start + len(self.texts) : end])
        spans = _spans(self.texts, self.segmenter.min_chars, self.segmenter.kind)
        steps = []
        for i, (a, b) in enumerate(spans):
            if (a, b) not in self.step_texts:
                self.step_texts[(a, b)] = self.tokenizer.decode(list(ids[start + a : start + b]))
            steps.append(
                Step(index=i, start=start + a, end=start + b, text=self.step_texts[(a, b)])
            )
        return steps
