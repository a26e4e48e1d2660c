"""The shapes world's text encoder learns to parse its prompts: per-token phrase targets, and a T5 that reads them."""

from __future__ import annotations

import numpy as np
import torch

from pixart_core.t5.tokenizer import load_t5_tokenizer
from pixart_core.testing import shapes_training as training
from pixart_core.testing.shapes_data import ShapeSpec, make_scene, render
from pixart_core.testing.shapes_text import ATTRIBUTES, IGNORE, phrase_targets, pretrain_t5
from pixart_core.testing.shapes_world import word_token_positions


def test_every_token_of_a_phrase_names_that_phrases_colour_shape_and_place(t5_tokenizer_dir):
    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    specs = [ShapeSpec("circle", "red", "left", 26, 64, 15), ShapeSpec("star", "blue", "top right", 102, 26, 15)]
    scene = render("grey", specs)
    prompt = scene.prompt.lower()
    targets = phrase_targets(tokenizer, scene.background, scene.shapes, 48)  # [48, 4]
    length = len(tokenizer.encode(prompt))
    red, blue, star, grey = word_token_positions(tokenizer, prompt, ["red", "blue", "star", "grey"])
    assert targets[red].tolist() == [ATTRIBUTES["colour"].index("red"), ATTRIBUTES["shape"].index("circle"),
                                     ATTRIBUTES["place"].index("left"), IGNORE]
    assert targets[blue].tolist() == targets[star].tolist() == [
        ATTRIBUTES["colour"].index("blue"), ATTRIBUTES["shape"].index("star"), ATTRIBUTES["place"].index("top right"),
        IGNORE]
    assert targets[grey].tolist() == [IGNORE, IGNORE, IGNORE, ATTRIBUTES["background"].index("grey")]
    assert (targets[length - 1:] == IGNORE).all()  # </s> and padding name nothing
    # each phrase covers its own tokens, from its article to its place; "and" between them names nothing
    (joint,) = word_token_positions(tokenizer, prompt, ["and"])
    assert (targets[:joint, 0] == ATTRIBUTES["colour"].index("red")).all()
    assert (targets[joint] == IGNORE).all()
    assert (targets[joint + 1:star + 1, 0] == ATTRIBUTES["colour"].index("blue")).all()


def test_a_shape_free_prompt_names_its_background_on_every_token(t5_tokenizer_dir):
    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    targets = phrase_targets(tokenizer, "black", [], 48)  # "a plain black background"
    length = len(tokenizer.encode("a plain black background")) - 1
    assert (targets[:length, 3] == ATTRIBUTES["background"].index("black")).all()
    assert (targets[:length, :3] == IGNORE).all() and (targets[length:] == IGNORE).all()


def test_a_t5_taught_to_parse_tells_left_from_right(t5_tokenizer_dir):
    torch.manual_seed(0)
    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    scenes = [make_scene(seed) for seed in range(256)]
    captions = training.Captions.tokenize(tokenizer, [s.prompt for s in scenes])
    targets = torch.from_numpy(np.stack([phrase_targets(tokenizer, s.background, s.shapes, training.CAPTION_TOKENS)
                                         for s in scenes]))
    t5 = training.random_t5(0)
    accuracy = pretrain_t5(t5, captions.rows, captions.mask, targets, steps=150, batch=32, lr=3e-3,
                           generator=torch.Generator().manual_seed(0))
    assert not any(p.requires_grad for p in t5.parameters())  # frozen again afterwards
    assert accuracy.min() > 0.6, accuracy  # chance is 1/9 for places, 1/8 colours, 1/5 shapes and backgrounds
