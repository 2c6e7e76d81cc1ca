"""Samples in, padded micro-batches out.

Three sources yield sample dicts with the pull API's fields (`cursor`, `prompt_token_ids`,
`completion_token_ids`, `prompt`, `completion`, `finish_reason`):

    HttpSampleSource(client, job_id)   pulls pages from the service, waiting while the job runs
    JsonlSampleSource(path)            a JSONL export, one sample per line
    ListSampleSource(samples)          samples already in memory (tests, other tools)

Each sample becomes prompt + completion + EOS token ids, with labels -100 on every prompt token,
so only completion tokens (and the EOS) are targets. Samples are then bucketed by length inside a
window so a micro-batch holds sequences of similar length and padding stays small.

The order is a pure function of (seed, epoch, window start cursor): `DataPosition` names a point in
that order, so a resumed run sees exactly the micro-batches an uninterrupted run would.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from common.jsonl import read_jsonl
from common.protocol import DEFAULT_PAGE_SIZE

IGNORE_INDEX = -100                  # cross_entropy's default ignore_index
HTTP_POLL_S = 1.0                    # wait between empty pages while the job still samples
MIN_PROMPT_TOKENS_KEPT = 1           # a completion's first token needs one position before it


# -- sources ------------------------------------------------------------------------------------

@runtime_checkable
class SampleSource(Protocol):
    """Yields sample dicts in strictly increasing `cursor` order, from any cursor."""

    start_after: int

    def iter_from(self, after: int) -> Iterator[dict[str, Any]]:
        """Samples whose cursor is > `after`, in cursor order."""
        ...


class ListSampleSource:
    """Samples held in memory. Samples without a `cursor` get their 1-based position."""

    def __init__(self, samples: Iterable[dict[str, Any]], *, after: int = 0):
        self.samples = [dict(sample, cursor=sample.get("cursor", index + 1))
                        for index, sample in enumerate(samples)]
        _check_increasing(self.samples)
        self.start_after = after

    def iter_from(self, after: int) -> Iterator[dict[str, Any]]:
        return (sample for sample in self.samples if sample["cursor"] > after)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_from(self.start_after)


class JsonlSampleSource(ListSampleSource):
    """A JSONL export of the pull API (one sample per line). Blank lines are skipped."""

    def __init__(self, path: str | Path, *, after: int = 0):
        super().__init__(read_jsonl(path), after=after)


class HttpSampleSource:
    """Pulls a job's samples through the client's cursor iterator, which waits while the job runs.
    With `stall_timeout_s`, a job that stops progressing raises `client.JobStalled` naming it."""

    def __init__(self, client: Any, job_id: str, *, after: int = 0, page_size: int = DEFAULT_PAGE_SIZE,
                 poll_s: float = HTTP_POLL_S, stall_timeout_s: float | None = None):
        self.client = client
        self.job_id = job_id
        self.start_after = after
        self.page_size = page_size
        self.poll_s = poll_s
        self.stall_timeout_s = stall_timeout_s

    def iter_from(self, after: int) -> Iterator[dict[str, Any]]:
        return self.client.iter_samples(self.job_id, after=after, limit=self.page_size, poll_s=self.poll_s,
                                        stall_timeout_s=self.stall_timeout_s)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_from(self.start_after)


def _check_increasing(samples: list[dict[str, Any]]) -> None:
    for before, after in zip(samples, samples[1:]):
        if after["cursor"] <= before["cursor"]:
            raise ValueError(f"sample cursors must strictly increase; {after['cursor']} follows {before['cursor']}")


# -- tokenization -------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodedSample:
    cursor: int
    input_ids: list[int]
    num_prompt_tokens: int           # labels are IGNORE_INDEX on exactly these leading positions
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * self.num_prompt_tokens + self.input_ids[self.num_prompt_tokens:]


def eos_token_ids(tokenizer: Any = None, model_config: Any = None) -> list[int]:
    """Every id that ends a turn, the tokenizer's first: it is the one appended to completions.
    The model config is the fallback so a tiny model without a tokenizer still works."""
    ids: list[int] = []
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(model_config, "eos_token_id", None)):
        for token_id in (value if isinstance(value, (list, tuple)) else [value]):
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ValueError("no EOS token: neither the tokenizer nor the model config has eos_token_id")
    return ids


class SampleEncoder:
    """Turns a sample dict into token ids + prompt length, using the ids the service sampled."""

    def __init__(self, *, eos_ids: list[int], max_seq_len: int, tokenizer: Any = None):
        self.eos_ids = eos_ids
        self.max_seq_len = max_seq_len
        self.tokenizer = tokenizer

    def __call__(self, sample: dict[str, Any]) -> EncodedSample:
        prompt = self._ids(sample, "prompt_token_ids", "prompt")
        completion = self._ids(sample, "completion_token_ids", "completion")
        if not completion or completion[-1] not in self.eos_ids:
            completion = completion + [self.eos_ids[0]]   # teach the model to stop
        prompt, completion, truncated = self._fit(prompt, completion)
        return EncodedSample(cursor=int(sample["cursor"]), input_ids=prompt + completion,
                             num_prompt_tokens=len(prompt), truncated=truncated)

    def _ids(self, sample: dict[str, Any], ids_field: str, text_field: str) -> list[int]:
        # The service's ids are exactly what was sampled; re-tokenizing text may not round-trip.
        if sample.get(ids_field) is not None:
            return [int(token_id) for token_id in sample[ids_field]]
        if self.tokenizer is None:
            raise ValueError(f"sample at cursor {sample.get('cursor')} has no {ids_field} and there is "
                             "no tokenizer to encode its text")
        # The prompt text is already chat-template rendered by the service: no special tokens added.
        return list(self.tokenizer(sample.get(text_field) or "", add_special_tokens=False)["input_ids"])

    def _fit(self, prompt: list[int], completion: list[int]) -> tuple[list[int], list[int], bool]:
        """Cut the prompt's start first (its end leads into the completion); cut the completion's
        tail only when it alone does not fit."""
        if len(prompt) + len(completion) <= self.max_seq_len:
            return prompt, completion, False
        completion = completion[: self.max_seq_len - MIN_PROMPT_TOKENS_KEPT]
        keep_prompt = max(MIN_PROMPT_TOKENS_KEPT, self.max_seq_len - len(completion))
        return prompt[-keep_prompt:], completion, True


# -- batching -----------------------------------------------------------------------------------

@dataclass
class MicroBatch:
    input_ids: torch.Tensor          # [batch, longest], right-padded
    attention_mask: torch.Tensor
    labels: torch.Tensor             # IGNORE_INDEX on prompt and padding
    cursors: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_padded_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def num_targets(self) -> int:
        """Positions that carry loss: labels shift left by one, so the first token never does."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def bucket_by_length(samples: list[EncodedSample], *, max_sequences: int, max_padded_tokens: int,
                     pad_to_multiple: int = 1) -> list[list[EncodedSample]]:
    """Greedy micro-batches over the samples sorted by length, each within both budgets."""
    ordered = sorted(samples, key=lambda sample: (len(sample), sample.cursor))
    batches: list[list[EncodedSample]] = []
    current: list[EncodedSample] = []
    for sample in ordered:
        grown = len(current) + 1
        padded_length = round_up(len(sample), pad_to_multiple)
        if current and (grown > max_sequences or grown * padded_length > max_padded_tokens):
            batches.append(current)
            current = []
        current.append(sample)
    if current:
        batches.append(current)
    return batches


def collate(samples: list[EncodedSample], pad_id: int, pad_to_multiple: int = 1) -> MicroBatch:
    longest = round_up(max(len(sample) for sample in samples), pad_to_multiple)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        length = len(sample)
        input_ids[row, :length] = torch.tensor(sample.input_ids)
        labels[row, :length] = torch.tensor(sample.labels)
        attention_mask[row, :length] = 1
    return MicroBatch(input_ids, attention_mask, labels, [sample.cursor for sample in samples])


@dataclass(frozen=True)
class DataPosition:
    """A point in the micro-batch order: `batch_index` micro-batches of the window that starts
    after `window_after` in `epoch` have been consumed."""
    epoch: int = 0
    window_after: int | None = None    # None: the source's start cursor
    batch_index: int = 0


@dataclass
class PaddingStats:
    real_tokens: int = 0
    padded_tokens: int = 0
    truncated_samples: int = 0
    samples: int = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


class MicroBatchStream:
    """Deterministic micro-batches over a SampleSource, epoch after epoch.

    Within an epoch, samples are read in cursor order in windows of `window` samples (a live job
    can be trained on as its pages arrive); each window is bucketed by length and its micro-batches
    are shuffled with a seed derived from (seed, epoch, window start)."""

    def __init__(self, source: SampleSource, encoder: SampleEncoder, *, window: int, max_sequences: int,
                 max_padded_tokens: int, seed: int, pad_id: int, epochs: int | None = None,
                 pad_to_multiple: int = 1):
        self.source = source
        self.encoder = encoder
        self.window = window
        self.max_sequences = max_sequences
        self.max_padded_tokens = max_padded_tokens
        self.seed = seed
        self.pad_id = pad_id
        self.epochs = epochs          # None: cycle forever (the caller stops at max_steps)
        self.pad_to_multiple = pad_to_multiple
        self.stats = PaddingStats()

    def __iter__(self) -> Iterator[tuple[MicroBatch, DataPosition]]:
        return self.iterate(DataPosition())

    def iterate(self, position: DataPosition) -> Iterator[tuple[MicroBatch, DataPosition]]:
        """Yield (micro-batch, position after it), starting at `position`."""
        epoch = position.epoch
        while self.epochs is None or epoch < self.epochs:
            start = self.source.start_after if position.window_after is None else position.window_after
            skip = position.batch_index if epoch == position.epoch else 0
            yielded = False
            for window_after, batches in self._windows(start, epoch):
                for index in range(skip, len(batches)):
                    yielded = True
                    yield self._collate(batches[index]), DataPosition(epoch, window_after, index + 1)
                skip = 0
            if not yielded and epoch == position.epoch and position == DataPosition():
                raise ValueError("the sample source yielded no samples")
            epoch += 1
            position = DataPosition(epoch)

    def _windows(self, after: int, epoch: int) -> Iterator[tuple[int, list[list[EncodedSample]]]]:
        window: list[EncodedSample] = []
        window_after = after
        for sample in self.source.iter_from(after):
            window.append(self.encoder(sample))
            if len(window) == self.window:
                yield window_after, self._plan(window, epoch, window_after)
                window_after, window = window[-1].cursor, []
        if window:
            yield window_after, self._plan(window, epoch, window_after)

    def _plan(self, window: list[EncodedSample], epoch: int, window_after: int) -> list[list[EncodedSample]]:
        batches = bucket_by_length(window, max_sequences=self.max_sequences,
                                   max_padded_tokens=self.max_padded_tokens, pad_to_multiple=self.pad_to_multiple)
        # A string seed hashes the same in every process (unlike hash() of a str).
        random.Random(f"{self.seed}:{epoch}:{window_after}").shuffle(batches)
        return batches

    def _collate(self, samples: list[EncodedSample]) -> MicroBatch:
        batch = collate(samples, self.pad_id, self.pad_to_multiple)
        self.stats.real_tokens += batch.num_tokens
        self.stats.padded_tokens += batch.num_padded_tokens
        self.stats.truncated_samples += sum(sample.truncated for sample in samples)
        self.stats.samples += len(samples)
        return batch

    def micro_batches_per_epoch(self) -> int:
        """Counts one epoch's micro-batches from lengths alone (no tensors built). For a live job this
        waits until the job is finished."""
        return sum(len(batches) for _, batches in self._windows(self.source.start_after, 0))
