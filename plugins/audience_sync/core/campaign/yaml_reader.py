"""Read a campaign YAML file: refuse duplicate keys, keep the node tree to find line numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from audience_sync.core.campaign.base import FILE_FIELD, Loc
from audience_sync.core.campaign.paths import display_path
from audience_sync.core.errors import CampaignError


class _Loader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping defines the same key twice (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _Loader, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
    """Build a mapping, raising on a key defined twice."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, ScalarNode):
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key '{key}' (first defined on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def line_of(root: Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest node along ``loc`` in the YAML tree, if known."""
    node = root
    line: int | None = None
    for part in loc:
        if isinstance(node, MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == part:
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def read_yaml(path: Path) -> tuple[Any, Node | None]:
    """Parse ``path``; return (data, node tree). Raise CampaignError for unreadable/invalid files."""
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CampaignError(shown, FILE_FIELD, "file does not exist", "check the path") from None
    except UnicodeDecodeError:
        raise CampaignError(shown, FILE_FIELD, "file is not UTF-8 text", "save the file as UTF-8") from None
    except OSError as exc:
        raise CampaignError(
            shown, FILE_FIELD, f"cannot read file ({exc.strerror})", "check the file"
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise CampaignError(
            shown, FILE_FIELD, f"{exc.problem} and again on line {line}", "keep only one of them"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise CampaignError(
            shown,
            FILE_FIELD,
            f"YAML syntax error{where}: {problem}",
            "fix the YAML there: check indentation, and quote values containing ': ', '#', or starting "
            "with '@', '*', '&', '!', '{' or '['",
        ) from None
    except yaml.YAMLError as exc:
        raise CampaignError(shown, FILE_FIELD, f"YAML error: {type(exc).__name__}", "fix the YAML") from None
    finally:
        loader.dispose()
    return data, node
