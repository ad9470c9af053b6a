"""recipe.data's main() with a fault injected from the environment, for the interrupted-prepare test.

RECIPE_TEST_HANG_AT_SHARD=N   while writing shard N of the train split, write part of its file, create
                              RECIPE_TEST_MARKER, then hang (so that a test can kill -9 the process right there)
"""

import os
import sys
import time
from pathlib import Path

from recipe.data import main
from recipe.prepared import PARTIAL_SUFFIX, ShardWriter

hang_at = int(os.environ["RECIPE_TEST_HANG_AT_SHARD"])
original_write = ShardWriter.write


def write_then_hang(self, split, documents, first, end, path, report=lambda tokens: None):
    if path.name.startswith(f"data-{hang_at:05d}-") and split == "train":
        path.with_name(path.name + PARTIAL_SUFFIX).write_bytes(b"half a shard")
        Path(os.environ["RECIPE_TEST_MARKER"]).write_text(str(path))
        time.sleep(600)
    return original_write(self, split, documents, first, end, path, report)


ShardWriter.write = write_then_hang
sys.exit(main(sys.argv[1:]))
