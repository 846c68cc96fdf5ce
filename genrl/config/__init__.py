"""Recipe configs: YAML recipes validated into typed dataclasses (see ``validate``/``load``)."""

from genrl.config.load import apply_overrides, load_recipe, load_yaml, recipe_hash
from genrl.config.validate import (
    ComponentSpec,
    RecipeError,
    build,
    component,
    describe,
    option,
    to_dict,
)

__all__ = [
    "ComponentSpec",
    "RecipeError",
    "apply_overrides",
    "build",
    "component",
    "describe",
    "load_recipe",
    "load_yaml",
    "option",
    "recipe_hash",
    "to_dict",
]
