"""Exceptions raised by embtab's compiled core (kept import-free so the core can raise them)."""


class TableFullError(RuntimeError):
    """A table at its ``max_size`` was asked to take a new ID. Nothing was inserted.

    Attributes
    ----------
    capacity : int
        Slots of the table's index when the error was raised.
    load_factor : float
        Live IDs / capacity at that moment.
    """

    def __init__(self, message: str, capacity: int, load_factor: float):
        super().__init__(message)
        self.capacity = int(capacity)
        self.load_factor = float(load_factor)

    def __reduce__(self):
        return (type(self), (str(self), self.capacity, self.load_factor))
