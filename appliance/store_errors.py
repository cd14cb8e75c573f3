"""The store's one error type (its own module so the store's mixins can raise it)."""


class StoreError(ValueError):
    """A write was refused (unknown reference, duplicate, bad value)."""
