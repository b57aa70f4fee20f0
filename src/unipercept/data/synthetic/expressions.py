"""Referring expressions that pick out exactly one object of a scene.

Three forms, all built from a *phrase* (category plus some of size, colour, texture and, in
videos, motion):

* ``"the small blue square"``: the phrase alone matches only the target;
* ``"the large hexagon at the top"``: the target is the extreme one, on an axis, of the objects
  the phrase matches;
* ``"the yellow triangle left of the green ring"``: the target is the only object matching the
  phrase that stands in the relation to an anchor, itself named by a unique phrase.

Relations compare box centres. A relation or extreme is only used when it holds with a margin
and every competing object misses it by the same margin, so the expression stays unambiguous
for a reader who judges positions less precisely than this code does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import combinations

import numpy as np

# Fraction of the image side that positions must differ by to count as a clear relation.
MARGIN = 0.06
# name -> (axis, sign): the target's coordinate on ``axis`` times ``sign`` is smaller.
RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (0, 1),
    "right of": (0, -1),
    "above": (1, 1),
    "below": (1, -1),
}
EXTREMES: dict[str, tuple[int, int]] = {
    "left": (0, 1),
    "right": (0, -1),
    "top": (1, 1),
    "bottom": (1, -1),
}
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_ATTRIBUTES = ("size", "colour", "texture", "motion")


@dataclass(frozen=True)
class Facts:
    """What an expression may say about an object.

    Attributes:
        category: shape category.
        colour: colour name.
        size: size class.
        texture: texture name.
        centre: ``(x, y)`` box centre normalised by the image width and height.
        motion: dominant direction of motion in a video (one of :data:`MOTIONS`), or None.
    """

    category: str
    colour: str
    size: str
    texture: str
    centre: tuple[float, float]
    motion: str | None = None


@dataclass(frozen=True)
class Phrase:
    """A category with some attributes; an attribute left None is not mentioned."""

    category: str
    size: str | None = None
    colour: str | None = None
    texture: str | None = None
    motion: str | None = None

    def matches(self, facts: Facts) -> bool:
        """Whether every mentioned attribute agrees with ``facts``."""
        return all(
            getattr(self, field.name) in (None, getattr(facts, field.name))
            for field in fields(self)
        )

    @property
    def text(self) -> str:
        """English words: ``"the small red striped circle moving left"``."""
        words = ["the", self.size, self.colour, self.texture, self.category]
        if self.motion is not None:
            words += ["moving", self.motion]
        return " ".join(word for word in words if word is not None)


def phrases(facts: Facts) -> list[Phrase]:
    """Every phrase true of ``facts``, fewest attributes first."""
    known = [name for name in _ATTRIBUTES if getattr(facts, name) is not None]
    return [
        Phrase(facts.category, **{name: getattr(facts, name) for name in chosen})
        for count in range(len(known) + 1)
        for chosen in combinations(known, count)
    ]


def _matching(phrase: Phrase, scene: Sequence[Facts]) -> list[int]:
    return [index for index, facts in enumerate(scene) if phrase.matches(facts)]


def _key(facts: Facts, axis: int, sign: int) -> float:
    return sign * facts.centre[axis]


def candidate_expressions(
    scene: Sequence[Facts], target: int, *, spatial: bool = True, num_named: int | None = None
) -> dict[str, list[str]]:
    """All unambiguous expressions for ``scene[target]``, grouped by form.

    Args:
        scene: every object an expression could be confused with.
        target: index into ``scene``.
        spatial: also build extremes and relations (off for videos, where positions change).
        num_named: only ``scene[:num_named]`` may be named as anchors of relations; the rest
            (members of a crowd, which have no annotation of their own) only compete.

    Returns:
        ``{"attribute": [...], "extreme": [...], "relation": [...]}`` in a deterministic order;
        lists may be empty.
    """
    own = phrases(scene[target])
    matches = {phrase: _matching(phrase, scene) for phrase in own}
    found: dict[str, list[str]] = {"attribute": [], "extreme": [], "relation": []}
    found["attribute"] = [phrase.text for phrase in own if matches[phrase] == [target]]
    if not spatial:
        return found
    for phrase in own:
        rivals = [index for index in matches[phrase] if index != target]
        if not rivals:
            continue
        for name, (axis, sign) in EXTREMES.items():
            mine = _key(scene[target], axis, sign)
            if all(_key(scene[index], axis, sign) - mine >= MARGIN for index in rivals):
                found["extreme"].append(f"{phrase.text} at the {name}")
    anchors = []
    for index in range(len(scene) if num_named is None else num_named):
        if index == target:
            continue
        unique = [p for p in phrases(scene[index]) if _matching(p, scene) == [index]]
        if unique:
            anchors.append((index, unique[0]))  # the shortest name of the anchor
    for phrase in own:
        for anchor, anchor_phrase in anchors:
            rivals = [index for index in matches[phrase] if index not in (target, anchor)]
            for name, (axis, sign) in RELATIONS.items():
                reference = _key(scene[anchor], axis, sign)
                holds = reference - _key(scene[target], axis, sign) >= MARGIN
                if holds and all(
                    _key(scene[index], axis, sign) - reference >= MARGIN for index in rivals
                ):
                    found["relation"].append(f"{phrase.text} {name} {anchor_phrase.text}")
    return found


def sample_expressions(
    rng: np.random.Generator,
    scene: Sequence[Facts],
    target: int,
    count: int,
    *,
    spatial: bool = True,
    num_named: int | None = None,
) -> list[str]:
    """Up to ``count`` distinct unambiguous expressions for ``scene[target]``, drawing forms in
    random order so that attribute-only, extreme and relational ones all occur. Arguments are
    those of :func:`candidate_expressions`.

    Returns:
        The expressions; empty when the target cannot be told apart (identical twins).
    """
    pools = {
        form: list(texts)
        for form, texts in candidate_expressions(
            scene, target, spatial=spatial, num_named=num_named
        ).items()
        if texts
    }
    chosen: list[str] = []
    while pools and len(chosen) < count:
        forms = sorted(pools)
        form = forms[int(rng.integers(len(forms)))]
        pool = pools[form]
        chosen.append(pool.pop(int(rng.integers(len(pool)))))
        if not pool:
            del pools[form]
    return chosen
