"""The names every part shares: MRI contrasts and tumour label sets (plain Python, so config schemas import it).

* :data:`CONTRASTS`: the four MRI contrasts in their canonical channel order.
* :data:`LABEL_SETS`: the tumour label sets over the BraTS 2023 labels (1 necrotic core, 2 oedema, 3 enhancing
  tumour): ``whole`` (1, 2, 3), ``core`` (1, 3), ``enhancing`` (3). The segmenter's output regions use the
  same names; the BraTS region names ``wt``, ``tc``, ``et`` (older configs and model files) are aliases.
* :func:`label_set`: a label-set name, an alias, ``"1,3"`` or a list of labels -> the label values.
* :func:`region_names`: a segmenter's regions -> their canonical names (``whole`` first).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from tgrowth.errors import ConfigError, DataError

__all__ = ["CONTRASTS", "LABEL_SETS", "LABEL_SET_ALIASES", "LEGACY_ENHANCING", "VALID_LABELS", "label_set",
           "label_set_name", "region_names"]

CONTRASTS: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
VALID_LABELS: tuple[int, ...] = (0, 1, 2, 3)  # BraTS 2023: 1 necrotic core, 2 oedema, 3 enhancing
LABEL_SETS: dict[str, tuple[int, ...]] = {"whole": (1, 2, 3), "core": (1, 3), "enhancing": (3,)}
LABEL_SET_ALIASES: dict[str, str] = {"wt": "whole", "tc": "core", "et": "enhancing"}  # BraTS region names
LEGACY_ENHANCING = 4  # BraTS 2021 labelled enhancing tumour 4 (2023: 3); tumour masks count it as 3


def label_set_name(name: str) -> str | None:
    """The canonical label-set name of ``name`` (``whole``, ``core``, ``enhancing`` or an alias); None otherwise."""
    key = name.strip().lower()
    key = LABEL_SET_ALIASES.get(key, key)
    return key if key in LABEL_SETS else None


def label_set(labels: str | int | Sequence[int] = "whole") -> tuple[int, ...]:
    """``"whole"`` (1,2,3), ``"core"`` (1,3), ``"enhancing"`` (3,) (or their aliases ``wt``/``tc``/``et``), or
    explicit label values (``[1, 3]``, ``"1,3"``, ``3``)."""
    if isinstance(labels, str):
        name = label_set_name(labels)
        if name is not None:
            return LABEL_SETS[name]
        try:
            return tuple(int(x) for x in labels.strip().lower().replace("+", ",").split(",") if x.strip())
        except ValueError:
            raise DataError(f"unknown tumour label set {labels!r}; use whole, core, enhancing or label values like [1, 3]") from None
    if isinstance(labels, numbers.Integral):
        return (int(labels),)
    out = tuple(int(x) for x in labels)
    if not out:
        raise DataError("tumour label set is empty")
    return out


def region_names(regions: Sequence[str], key: str = "model.regions") -> list[str]:
    """A segmenter's output regions (label-set names or their aliases) -> canonical names; ``whole`` must come first
    (channel 0 is the whole tumour that predict reads)."""
    names = [label_set_name(str(r)) for r in regions]
    if not names or names[0] != "whole" or None in names:
        raise ConfigError(f"{key} must start with whole and use the label sets {', '.join(LABEL_SETS)} (or their "
                          f"aliases {', '.join(LABEL_SET_ALIASES)}), got {list(regions)}")
    return names  # type: ignore[return-value]
