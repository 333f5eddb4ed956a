"""What an item of a user's dataset is (kdcache.data.items): tuples, Hugging Face style dicts, bare images, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kdcache.data.items import TEACHER_KEY, ItemKeys, check_served_dict, item_parts, rebuild_item
from kdcache.errors import ConfigError

IMAGE = torch.zeros(3, 4, 4, dtype=torch.uint8)


@pytest.mark.parametrize("item, keys, label", [
    ((IMAGE, 2), None, 2),
    ([IMAGE, 2, "extra"], None, 2),
    ((IMAGE,), None, None),
    (IMAGE, None, None),  # a bare image: no label
    ({"image": IMAGE, "label": 2}, None, 2),  # Hugging Face style
    ({"img": IMAGE, "target": 2, "path": "a.jpg"}, None, 2),
    ({"pixel_values": IMAGE, "labels": 2}, None, 2),
    ({"jpg": IMAGE, "cls": 2, "__key__": "0001"}, None, 2),  # webdataset style
    ({"image": IMAGE}, None, None),  # a dict without a label: images only
    ({"photo": IMAGE, "kind": 2}, ItemKeys(image="photo", label="kind"), 2),  # the user names the keys
])
def test_items_of_every_common_structure_give_their_image_and_label(item, keys, label):
    image, found = item_parts(item, 0, keys)
    assert image is IMAGE and found == label


@pytest.mark.parametrize("item, keys, needle", [
    ({"photo": IMAGE, "kind": 2}, None, "dataset item 7 is a dict with keys ['photo', 'kind'], none of them an "
                                        "image key (image, img, pixel_values"),
    ({"image": IMAGE}, ItemKeys(image="photo"), "dataset item 7 has no key 'photo' (image_key); its keys are ['image']"),
    ({"image": IMAGE}, ItemKeys(label="y"), "dataset item 7 has no key 'y' (label_key)"),
    ((IMAGE, 1), ItemKeys(image="image"), "image_key/label_key name keys of dict items, but dataset item 7 is a tuple"),
    ("a.jpg", None, "dataset item 7 is a str; give (image, label) tuples, dicts with an image and a label key"),
    (3, None, "dataset item 7 is a int"),
    ((), None, "dataset item 7 is an empty tuple"),
])
def test_items_kdcache_cannot_read_are_refused_in_one_line_naming_what_was_found(item, keys, needle):
    with pytest.raises(ConfigError) as e:
        item_parts(item, 7, keys)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_served_items_keep_the_users_structure():
    item = {"image": Image.new("RGB", (4, 4)), "label": 1, "path": "a/b.jpg"}
    served = rebuild_item(item, 0, None, IMAGE, -1, torch.ones(3))
    assert set(served) == {"image", "label", "path", TEACHER_KEY} and served["image"] is IMAGE
    assert served["label"] == -1 and served["path"] == "a/b.jpg" and item["label"] == 1  # the user's dict is not changed
    assert rebuild_item({"img": IMAGE}, 0, None, IMAGE, 3, None)["label"] == 3  # no label key: "label"
    assert rebuild_item((IMAGE, 1, "x"), 0, None, IMAGE, 1, np.zeros(2))[:2] == (IMAGE, 1)
    with pytest.raises(ConfigError, match="already has a key 'teacher_logits'"):
        check_served_dict({"image": IMAGE, TEACHER_KEY: 0}, 0)
