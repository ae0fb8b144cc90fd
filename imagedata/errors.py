"""The one error a dataset reader raises."""


class DataError(ValueError):
    """The data asked for is absent or not laid out as expected; the message says what to do."""
