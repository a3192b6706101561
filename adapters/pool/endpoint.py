"""One backend address and the pool's view of it: calls out now, recent failures, whether
outlier ejection or the health checks have taken it out."""

from __future__ import annotations


class Endpoint:
    def __init__(self, address: str) -> None:
        self.address = address
        self.outstanding = 0  # calls (streams included) not finished yet
        #: healthy and not ejected: read on every call, so kept up to date, not worked out
        self.up = True
        self._healthy = True
        self._ejected_until: float | None = None
        # outlier ejection (adapters.pool.outlier)
        self.consecutive_failures = 0
        self.window_started = 0.0
        self.window_calls = 0
        self.window_failures = 0
        self.ejection_multiplier = 0  # ejections in a row; the next lasts one base time more
        self.returned_at = float("-inf")  # when the last ejection ended
        # active health checks (adapters.pool.health)
        self.probes_passed = 0  # in a row
        self.probes_failed = 0  # in a row
        # counts for metrics
        self.ejections: dict[str, int] = {}  # by reason
        self.health_check_failures = 0

    @property
    def healthy(self) -> bool:
        """As the active health checks last found it."""
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy = value
        self.up = value and self._ejected_until is None

    @property
    def ejected_until(self) -> float | None:
        """Outlier ejection keeps it out until then; None: not ejected."""
        return self._ejected_until

    @ejected_until.setter
    def ejected_until(self, value: float | None) -> None:
        self._ejected_until = value
        self.up = self._healthy and value is None

    @property
    def ejected(self) -> bool:
        return self._ejected_until is not None
