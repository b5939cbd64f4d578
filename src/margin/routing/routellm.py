"""RouteLLM correctness labels (strong = gpt-4-1106-preview, weak = Mixtral-8x7B) and the evaluation splits.

The data is read from a folder (by default the repository's `data/routing`, never shipped in the package):
`mmlu/mmlu_<subject>.csv` and `gsm8k/gsm8k_responses.csv` (plain or `.csv.gz`), each with a `prompt` column and
one True/False column per model, and `*/contaminated_prompts.jsonl`, whose prompts are dropped. Subjects are
discovered from the file names, so a folder with more (or fewer) subjects works unchanged.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from margin.datafiles import find, open_text, read_bytes, repo_data
from margin.errors import ConfigError

STRONG_COLUMN = "gpt-4-1106-preview"
WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DATASETS = ("mmlu", "gsm8k")


@dataclass(frozen=True)
class Example:
    """One prompt with the correctness of both models; `group` is the MMLU subject (or the dataset name)."""

    prompt: str
    weak_ok: bool
    strong_ok: bool
    group: str

    @property
    def weak_adequate(self) -> bool:
        """The label the router learns: the weak model does not lose to the strong one on this prompt."""
        return self.weak_ok or not self.strong_ok


@dataclass(frozen=True)
class Split:
    """Indices into a dataset's example list; `name` says what was held out."""

    name: str
    train: list[int]
    test: list[int]


def default_data_dir() -> Path:
    """The RouteLLM labels bundled in the repository (`data/routing`, see `data/README.md`)."""
    return repo_data("routing")


def contaminated_prompts(folder: Path) -> set[str]:
    """Prompts RouteLLM marked as contaminated (both its train and eval spellings)."""
    path = find(folder / "contaminated_prompts.jsonl")
    if not path.exists():
        return set()
    found: set[str] = set()
    for line in read_bytes(path).decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            found.update(str(record[key]) for key in ("train_prompt", "eval_prompt") if key in record)
    return found


def _parse_bool(value: str, path: Path) -> bool:
    if value not in ("True", "False"):
        raise ConfigError(f"{path}: expected True/False, got {value!r}")
    return value == "True"


def _read_csv(path: Path, group: str, excluded: set[str]) -> list[Example]:
    """The csv module's own field limit (128 KiB; the longest field of the bundled files is 4,868 characters)
    is left as it is: it is one setting for the whole process, which other readers rely on."""
    examples = []
    with open_text(path) as handle:
        reader = csv.DictReader(handle)
        try:
            missing = {"prompt", STRONG_COLUMN, WEAK_COLUMN} - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(f"{path} lacks the columns {sorted(missing)}")
            for row in reader:
                if row["prompt"] in excluded:
                    continue
                weak, strong = _parse_bool(row[WEAK_COLUMN], path), _parse_bool(row[STRONG_COLUMN], path)
                examples.append(Example(row["prompt"], weak, strong, group))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not CSV: {exc}") from exc
    return examples


def load_dataset(data_dir: Path, name: str) -> list[Example]:
    """All non-contaminated examples of `mmlu` (grouped by subject) or `gsm8k`, in a stable order."""
    if name not in DATASETS:
        raise ConfigError(f"unknown routing dataset {name!r}; expected one of {', '.join(DATASETS)}")
    folder = data_dir / name
    if not folder.is_dir():
        raise ConfigError(f"routing data folder {folder} does not exist (see --data)")
    excluded = contaminated_prompts(folder)
    if name == "gsm8k":
        return _read_csv(folder / "gsm8k_responses.csv", "gsm8k", excluded)
    files = sorted({folder / p.name.removesuffix(".gz") for p in folder.glob("mmlu_*.csv*")})
    if not files:
        raise ConfigError(f"no mmlu_<subject>.csv files in {folder}")
    examples: list[Example] = []
    for path in files:
        examples.extend(_read_csv(path, path.stem.removeprefix("mmlu_"), excluded))
    return examples


def grouped_folds(groups: Sequence[str], k: int, seed: int = 0) -> list[Split]:
    """Leave-groups-out k-fold: each group lands in exactly one test fold, never in that fold's train set.

    Groups are shuffled with `seed` and dealt greedily, largest first, to the fold with the fewest examples,
    so folds have similar sizes without depending on any particular group list.
    """
    sizes: dict[str, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    if len(sizes) < k:
        raise ConfigError(f"{len(sizes)} groups cannot make {k} leave-groups-out folds")
    names = sorted(sizes)
    random.Random(seed).shuffle(names)
    names.sort(key=lambda name: -sizes[name])
    members: list[set[str]] = [set() for _ in range(k)]
    load = [0] * k
    for name in names:
        fold = load.index(min(load))
        members[fold].add(name)
        load[fold] += sizes[name]
    return [_split_by(groups, held, f"subjects {i + 1}/{k}") for i, held in enumerate(members)]


def _split_by(groups: Sequence[str], held: set[str], name: str) -> Split:
    train = [i for i, group in enumerate(groups) if group not in held]
    test = [i for i, group in enumerate(groups) if group in held]
    return Split(name, train, test)


def kfolds(n: int, k: int, seed: int = 0) -> list[Split]:
    """Plain shuffled k-fold over `n` examples."""
    if n < k:
        raise ConfigError(f"{n} examples cannot make {k} folds")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    chunks = [sorted(order[i::k]) for i in range(k)]
    return [Split(f"fold {i + 1}/{k}", sorted(set(order) - set(chunk)), chunk) for i, chunk in enumerate(chunks)]


def iter_splits(examples: Sequence[Example], name: str, k: int, seed: int = 0) -> Iterator[Split]:
    """MMLU: leave-subjects-out folds; GSM8K (one group): shuffled k-fold."""
    if name == "mmlu":
        yield from grouped_folds([e.group for e in examples], k, seed)
    else:
        yield from kfolds(len(examples), k, seed)
