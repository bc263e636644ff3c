"""The tiny models and data every training test builds on, built once per module."""

import pytest

from tiny_models import save_tiny_parts, write_color_dataset


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    vision, llm = save_tiny_parts(directory)
    data_json, images = write_color_dataset(directory / "data", count=32)
    return vision, llm, data_json, images
