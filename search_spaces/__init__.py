"""Search spaces: one YAML file per study, validated by ``search_spaces.schema``."""
from search_spaces.schema import SearchSpace, SpaceError, load_space, shipped_spaces, suggest

__all__ = ["SearchSpace", "SpaceError", "load_space", "shipped_spaces", "suggest"]
