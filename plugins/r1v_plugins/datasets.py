"""Datasets: the bundled synthetic visual-reasoning tasks and users' JSONL, Parquet and save_to_disk files."""

from __future__ import annotations

from typing import Any, Literal

from r1v import hookimpl
from r1v.core.registry import get_registry
from r1v.data.datasets import BadSamplePolicy, JsonlDataset, PairsDataset, SyntheticDataset, SyntheticPairs
from r1v.data.hf_disk import HfDiskDataset, val_folder
from r1v.data.mixture import MixtureDataset, build_mixture
from r1v.data.parquet import ParquetDataset, Preset
from r1v.data.synthetic import TASKS
from r1v.data.synthetic_hard import TASKS as HARD_TASKS
from r1v.data.synthetic_hard import SyntheticHard, SyntheticHardPairs
from r1v.data.synthetic_omni import TASKS as OMNI_TASKS
from r1v.data.synthetic_omni import SyntheticOmni
from r1v.data.video import VideoKnobs

PairStyle = Literal["answer", "reasoning"]


def synthetic_dataset(split: str, n_train: int = 4000, n_val: int = 128, seed: int = 0, image_size: int = 64,
                      tasks: list[str] | None = None) -> SyntheticDataset:  # fmt: skip
    """Bundled synthetic scenes (counting, colours, positions, arithmetic), generated on the fly."""
    return SyntheticDataset(n_train if split == "train" else n_val, split, seed, image_size, tuple(tasks or TASKS))


def jsonl_dataset(split: str, train: str, val: str | None = None, image_root: str | None = None,
                  on_bad_sample: BadSamplePolicy = "skip", require_reasoning: bool = False,
                  allow_outside_root: bool = False, video: dict[str, int] | None = None,
                  max_visual_tokens: int | None = None) -> JsonlDataset | None:  # fmt: skip
    """Your data: JSONL rows (images, audios, videos, question or messages, answer, optional reasoning); media paths
    must resolve inside ``image_root`` (default: the file's folder) unless ``allow_outside_root``. ``video`` and
    ``max_visual_tokens`` are read by the processor too (r1v.data.video.VideoKnobs); here: frames per video."""
    path = train if split == "train" else val
    if path is None:
        return None
    frames = VideoKnobs.of({"video": video, "max_visual_tokens": max_visual_tokens}).frames  # checks the knobs
    return JsonlDataset(path, image_root, on_bad_sample, require_reasoning, allow_outside_root, frames)


def parquet_dataset(split: str, train: str, val: str | None = None, columns: dict[str, str | None] | None = None,
                    preset: Preset = "r1v", image_root: str | None = None, on_bad_sample: BadSamplePolicy = "skip",
                    require_reasoning: bool = False, allow_outside_root: bool = False, cache_row_groups: int = 4,
                    video: dict[str, int] | None = None,
                    max_visual_tokens: int | None = None) -> ParquetDataset | None:  # fmt: skip
    """Parquet shards (a glob, a file or a folder) read lazily by row group; ``columns`` maps r1v's fields to
    column names over a ``preset`` (r1v, llava, sharegpt, openai); images, audios and videos as paths or encoded
    bytes; ``video`` / ``max_visual_tokens`` as for jsonl."""
    path = train if split == "train" else val
    if path is None:
        return None
    frames = VideoKnobs.of({"video": video, "max_visual_tokens": max_visual_tokens}).frames  # checks the knobs
    return ParquetDataset(path, columns, preset, image_root, on_bad_sample, require_reasoning, allow_outside_root,
                          cache_row_groups, frames)  # fmt: skip


def hf_disk_dataset(split: str, train: str, val: str | None = None, train_split: str = "train",
                    columns: dict[str, str | None] | None = None, preset: Preset = "r1v", image_root: str | None = None,
                    on_bad_sample: BadSamplePolicy = "skip", require_reasoning: bool = False,
                    allow_outside_root: bool = False, cache_row_groups: int = 4, video: dict[str, int] | None = None,
                    max_visual_tokens: int | None = None) -> HfDiskDataset | None:  # fmt: skip
    """A Hugging Face ``datasets`` save_to_disk folder (a Dataset, or a DatasetDict's ``train_split``) read lazily
    by record batch; ``val``: a folder, a split name, or null for the DatasetDict's validation / test split;
    ``video`` / ``max_visual_tokens`` as for jsonl."""
    path = train if split == "train" else val_folder(train, val, train_split)
    if path is None:
        return None
    frames = VideoKnobs.of({"video": video, "max_visual_tokens": max_visual_tokens}).frames  # checks the knobs
    return HfDiskDataset(path, columns, preset, image_root, on_bad_sample, require_reasoning, allow_outside_root,
                         cache_row_groups, split=train_split, video_frames=frames)  # fmt: skip


def pairs_dataset(split: str, train: str, val: str | None = None, image_root: str | None = None,
                  on_bad_sample: BadSamplePolicy = "skip",
                  allow_outside_root: bool = False) -> PairsDataset | None:  # fmt: skip
    """Preference pairs from JSONL: the jsonl schema plus chosen and rejected completions."""
    path = train if split == "train" else val
    return None if path is None else PairsDataset(path, image_root, on_bad_sample,
                                                  allow_outside_root=allow_outside_root)  # fmt: skip


def synthetic_pairs_dataset(split: str, n_train: int = 4000, n_val: int = 128, seed: int = 0, image_size: int = 64,
                            tasks: list[str] | None = None, style: PairStyle = "answer") -> SyntheticPairs:  # fmt: skip
    """The synthetic tasks as preference pairs (chosen: right answer; rejected: a plausible wrong one)."""
    n = n_train if split == "train" else n_val
    return SyntheticPairs(n, split, seed, image_size, tuple(tasks or TASKS), style=style)


def mixture_dataset(split: str, sources: dict[str, dict[str, Any]] | None = None,
                    mixture: list[dict[str, Any]] | None = None, epoch_samples: int | None = None,
                    on_bad_sample: BadSamplePolicy = "skip",
                    require_reasoning: bool = False) -> MixtureDataset | None:  # fmt: skip
    """Several sources (each a data option: jsonl, parquet, hf_disk, synthetic, …) drawn by weight from a seeded
    stream; a source that runs out starts a new shuffled pass; exact resume (r1v/data/mixture.py)."""
    shared = {"on_bad_sample": on_bad_sample, "require_reasoning": require_reasoning}
    return build_mixture(split, sources, mixture, get_registry(), shared, epoch_samples)


def synthetic_hard_dataset(split: str, n_train: int = 4000, n_val: int = 1000, seed: int = 0, image_size: int = 64,
                           tasks: list[str] | None = None, flaws: dict[str, float] | None = None,
                           loop_repeats: int = 3, min_objects: int = 3,
                           max_objects: int = 6) -> SyntheticHard:  # fmt: skip
    """Issue 27's harder regime: compositional questions (relations, counts with arithmetic) and a training pool
    whose chains are flawed at the ``flaws`` shares (wrong steps, contradicting the image, looping)."""
    n = n_train if split == "train" else n_val
    return SyntheticHard(n, split, seed, image_size, tuple(tasks or HARD_TASKS), flaws, loop_repeats, min_objects,
                         max_objects)  # fmt: skip


def synthetic_hard_pairs_dataset(split: str, n_train: int = 4000, n_val: int = 128, seed: int = 0,
                                 image_size: int = 64, tasks: list[str] | None = None,
                                 flaws: dict[str, float] | None = None, loop_repeats: int = 3, min_objects: int = 3,
                                 max_objects: int = 6) -> SyntheticHardPairs:  # fmt: skip
    """The harder regime as reward-model pairs: chosen the sound chain, rejected a flawed one (same right answer)."""
    n = n_train if split == "train" else n_val
    return SyntheticHardPairs(n, split, seed, image_size, tuple(tasks or HARD_TASKS), flaws, loop_repeats,
                              min_objects, max_objects)  # fmt: skip


def synthetic_omni_dataset(split: str, n_train: int = 4000, n_val: int = 200, seed: int = 0, image_size: int = 64,
                           tasks: list[str] | None = None) -> SyntheticOmni:  # fmt: skip
    """Issue 26's omni tasks in memory: beeps and tone pitches (audio), a moving square (video, three frames), beeps
    against triangles (image + audio)."""
    return SyntheticOmni(n_train if split == "train" else n_val, split, seed, image_size, tuple(tasks or OMNI_TASKS))


@hookimpl
def register_datasets(register):
    register("synthetic", synthetic_dataset)
    register("jsonl", jsonl_dataset)
    register("parquet", parquet_dataset)
    register("hf_disk", hf_disk_dataset)
    register("mixture", mixture_dataset)
    register("pairs", pairs_dataset)
    register("synthetic_pairs", synthetic_pairs_dataset)
    register("synthetic_hard", synthetic_hard_dataset)
    register("synthetic_hard_pairs", synthetic_hard_pairs_dataset)
    register("synthetic_omni", synthetic_omni_dataset)
