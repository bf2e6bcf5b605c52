import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBTAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """Path to a data set in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the test needs ../shared/data/{name} beside the checkout "
                    "(its licence forbids shipping it with embtab)")
    return path


def same_json(a, b) -> bool:
    """a == b as results compare: NaN equals NaN (an interval that is not defined, such as one
    over seeds that all agree, is NaN in both)."""
    import json
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
