from __future__ import annotations

import pytest
import torch

from unipercept.structures import AnnotationPrompt, CategoryPrompt, ExpressionPrompt


def test_category_prompt():
    prompt = CategoryPrompt((" person", "red car"))
    assert prompt.names == ("person", "red car")
    assert prompt.kind == "category"
    assert prompt.caption() == "person. red car."
    assert CategoryPrompt.parse("cat. dog. traffic light").names == ("cat", "dog", "traffic light")
    assert CategoryPrompt.parse("cat, dog").names == ("cat", "dog")
    assert CategoryPrompt(["a"]).names == ("a",)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ((), "CategoryPrompt.names is empty"),
        (("cat", "  "), r"CategoryPrompt.names\[1\] is empty"),
        (("cat", 3), r"CategoryPrompt.names\[1\] is empty or not a string"),
        (("Cat", "dog", "cat "), r"duplicate: names\[0\] = 'Cat' and names\[2\] = 'cat '"),
        (("red  car", "red car"), "duplicate"),
    ],
)
def test_category_prompt_errors(names, message):
    with pytest.raises(ValueError, match=message):
        CategoryPrompt(names)


def test_category_prompt_rejects_a_bare_string():
    with pytest.raises(TypeError, match="CategoryPrompt.parse"):
        CategoryPrompt("cat. dog")
    with pytest.raises(ValueError, match="names is empty"):
        CategoryPrompt.parse(" . , ")


def test_expression_prompt():
    assert ExpressionPrompt("  the  man in red ").text == "the man in red"
    assert ExpressionPrompt("x").kind == "expression"
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match="ExpressionPrompt.text is empty"):
            ExpressionPrompt(text)


def frame(height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.zeros(3, height, width, dtype=torch.uint8)


def test_annotation_prompt_box_and_mask():
    prompt = AnnotationPrompt(frame(), box=(4, 5, 20, 30))
    assert prompt.box.tolist() == [4.0, 5.0, 20.0, 30.0] and prompt.kind == "annotation"
    assert prompt.image_size == (48, 64)
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:20, 30:40] = True
    from_mask = AnnotationPrompt(frame(), mask=mask)
    assert from_mask.box.tolist() == [30.0, 10.0, 40.0, 20.0]
    edge = AnnotationPrompt(frame(), box=torch.tensor([0.0, 0.0, 64.0, 48.0]))
    assert edge.box.tolist() == [0.0, 0.0, 64.0, 48.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a box or a mask"),
        ({"box": (0, 0, 65, 10)}, r"box .* is outside the frame of width 64 and height 48"),
        ({"box": (-1, 0, 5, 10)}, "outside the frame"),
        ({"box": (5, 5, 5, 10)}, "must have x2 > x1 and y2 > y1"),
        ({"box": (0, 0, float("nan"), 10)}, "box holds non-finite numbers"),
        ({"box": (0, 0, float("inf"), 10)}, "box holds non-finite numbers"),
        ({"box": (0, 0, 5)}, "box must hold 4 numbers"),
        ({"mask": torch.zeros(48, 64, dtype=torch.bool)}, "mask is empty"),
        ({"mask": torch.ones(48, 63, dtype=torch.bool)}, r"mask must be an \(48, 64\) tensor"),
        ({"mask": torch.ones(48, 64)}, "mask must be bool"),
    ],
)
def test_annotation_prompt_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnnotationPrompt(frame(), **kwargs)


def test_annotation_prompt_frame_errors():
    with pytest.raises(ValueError, match=r"frame must be a \(3, H, W\) tensor"):
        AnnotationPrompt(torch.zeros(48, 64), box=(0, 0, 5, 5))
    nan_frame = torch.zeros(3, 8, 8)
    nan_frame[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frame holds non-finite"):
        AnnotationPrompt(nan_frame, box=(0, 0, 5, 5))
