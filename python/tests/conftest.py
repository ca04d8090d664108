import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_TOKENIZER = str(ROOT / "data-loaders" / "src" / "test" / "resources" / "tokenizer" / "tiny_bpe_tokenizer.json")


@pytest.fixture(scope="session")
def spark():
    import sparkatron

    s = sparkatron.spark_session(master="local[2]", app_name="sparkatron-pytest",
                                 conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"})
    yield s
    s.stop()
