"""What the unit and end-to-end tests of bad input share."""

import pytest
from helpers import TINY


@pytest.fixture
def base_overrides(text_file):
    return [*TINY, "data=text", f"data.path={text_file}", "logger=none", "trainer.max_steps=2"]
