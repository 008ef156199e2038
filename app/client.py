"""An httpx client of the loam server's API (Ollama's), for the CLI and the TUI."""

from __future__ import annotations

from typing import Any

import httpx

from app import config
from app.errors import LoamError


class ServerUnavailable(LoamError):
    """No loam server answers at LOAM_HOST."""


class ServerError(LoamError):
    """The server answered with an error."""


class Client:
    """Calls on a loam (or Ollama) server at `host` (LOAM_HOST by default)."""

    def __init__(self, host: str | None = None, timeout: float | None = 30.0) -> None:
        self.host = host or config.host()
        self.http = httpx.Client(base_url=f"http://{self.host}", timeout=timeout)

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ServerUnavailable(f"no loam server answers at {self.host}; start one with `loam serve`") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServerError(str(message))
        return response

    def ps(self) -> list[dict[str, Any]]:
        """The loaded models, as /api/ps lists them."""
        return self._request("GET", "/api/ps").json().get("models", [])

    def stop(self, model: str) -> None:
        """Unload a model now (keep_alive 0 with an empty prompt, as `ollama stop` does)."""
        self._request("POST", "/api/generate", json={"model": model, "keep_alive": 0})
