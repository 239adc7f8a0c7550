"""The offline compiler on the labelled set of bench/data/compiler_requests.yaml: ≥ 95 % right.

The set, the scoring and the figures are those of ``python -m bench.compiler``
(one pass here, no latency target: that is the bench's job).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compiler import (
    DEFAULT_LIMIT,
    EXAMPLE,
    TARGETS,
    accuracy,
    example_intents,
    format_misses,
    load_items,
    score_set,
)
from chiffon.agents.catalog.index import Catalog, catalog_for
from chiffon.agents.compiler.compiler import Compiler

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    found = catalog_for(Path(EXAMPLE), tmp_path_factory.mktemp("compiler-catalog-cache"))
    found.warm()
    return found


def test_the_set_is_big_enough() -> None:
    items = load_items()
    assert len(items) >= 48
    assert sum(item.refused for item in items) >= 6
    assert sum(bool(item.modify) for item in items) >= 6
    assert {item.modify for item in items if item.modify} <= set(example_intents())


async def test_offline_compiler_on_the_labelled_set(catalog: Catalog) -> None:
    items = load_items()
    verdicts, _ = await score_set(Compiler(catalog, default_limit=DEFAULT_LIMIT), items, example_intents())
    right, share = sum(v.ok for v in verdicts), accuracy(verdicts)
    assert share >= TARGETS["accuracy"], (
        f"{right}/{len(verdicts)} = {share:.1%} right, target ≥ {TARGETS['accuracy']:.0%}; "
        f"misses:\n{format_misses(verdicts)}"
    )
