"""What is on disk: the model repository's layout, path checks and config files."""

from modelport.repository.local import LocalRepository

__all__ = ["LocalRepository"]
