"""Reading a recipe's YAML safely: PyYAML's safe loader, with every key unique in its mapping
and the document's size bounded once its aliases are expanded (``seltrain.config`` reads every
training and search recipe through ``safe_yaml``)."""
from __future__ import annotations

import yaml

from seltrain.errors import excerpt

# The most nodes (scalars, lists, mappings) a recipe may hold once its aliases are expanded.
# The largest shipped recipe has about 100; a recipe of 10^4 is already hard to read. Aliases
# (&anchor / *anchor) stay allowed, but a nest of them (the "billion laughs") would expand to
# gigabytes and take minutes before any check: it is measured on the parsed node graph, each
# shared node counted once per use without expanding it, and refused before anything is built.
MAX_RECIPE_NODES = 10_000


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python objects) that also refuses a key given twice in one
    mapping (YAML says keys are unique; PyYAML keeps the last, so a second ``train:`` would
    silently drop the first) and a document that expands past ``MAX_RECIPE_NODES``."""

    source = "the recipe"

    def construct_document(self, node):
        size = _expanded_size(node, {}, 0)
        if size > MAX_RECIPE_NODES:
            raise _TooLarge(f"{self.source} holds more than {MAX_RECIPE_NODES} values once its "
                            f"aliases are expanded (nested aliases?), the most a recipe may "
                            "hold; write the values out, or nest fewer aliases")
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            # The keys written in this mapping; those a `<<: *base` merge brings in may be
            # overridden here, as YAML's merge key intends.
            seen: dict = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) \
                        and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise _DuplicateKey(
                            f"{self.source} gives key {excerpt(key)} twice in one mapping "
                            f"(lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                            "YAML keeps only one of them: merge the two into one")
                    seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class _TooLarge(yaml.YAMLError):
    pass


class _DuplicateKey(yaml.YAMLError):
    pass


def _expanded_size(node, memo: dict, depth: int) -> int:
    """How many nodes ``node`` stands for with every alias expanded, in time proportional to
    the distinct nodes (a shared node's size is computed once and reused)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if depth > 200:  # deeper than any recipe; also keeps the recursion bounded
        return MAX_RECIPE_NODES + 1
    memo[id(node)] = MAX_RECIPE_NODES + 1  # a node that contains itself (a cycle): too large
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(n, memo, depth + 1) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, memo, depth + 1) + _expanded_size(v, memo, depth + 1)
                        for k, v in node.value)
    else:
        total = 1
    total = min(total, MAX_RECIPE_NODES + 1)  # nothing above the bound needs exact counting
    memo[id(node)] = total
    return total


def safe_yaml(text, source: str = "the recipe"):
    """``yaml.safe_load`` of ``text`` (a string or an open file) with ``RecipeLoader``'s
    checks: unique keys, bounded size."""
    loader = RecipeLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
