"""An Ollama registry, spoken to as an OCI distribution v2 registry.

Manifest GET with the v2 Accept header, the bearer-token handshake on a 401,
then each blob in several byte ranges fetched in parallel into a resumable
partial file. The manifest is stored exactly as served once every blob checks out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.errors import DigestMismatch, SourceUnavailable
from app.store.blobs import BlobStore, digest_hex, partial_key, short_digest
from app.store.manifest import MEDIA_MANIFEST, MEDIA_MODEL, Layer, Manifest
from app.store.names import ModelName
from app.store.progress import Meter, ProgressEvent, ProgressFn
from app.store.sources import http

#: Blobs are split into parts of at least this many bytes, at most MAX_PARTS of them.
MIN_PART = 16 << 20
MAX_PARTS = 8
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parts_for(size: int) -> int:
    return max(1, min(MAX_PARTS, size // MIN_PART))


@dataclass(frozen=True)
class Pulled:
    """What a registry pull stored: the manifest bytes and the parsed manifest."""

    raw: bytes
    manifest: Manifest


@dataclass(frozen=True)
class RegistrySource:
    name: ModelName
    insecure: bool = False

    @property
    def base(self) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.name.host}"

    def describe(self) -> str:
        return f"registry {self.name.host} ({self.name.repository}:{self.name.tag})"

    def pull(self, blobs: BlobStore, progress: ProgressFn, validate: Callable[[Path], None]) -> Pulled:
        """Fetch the manifest and every blob it names into `blobs`; the caller writes the manifest."""
        with http.client() as client:
            session = _Session(client)
            progress(ProgressEvent("pulling manifest"))
            url = f"{self.base}/v2/{self.name.repository}/manifests/{self.name.tag}"
            try:
                response = session.get(url, headers={"Accept": MEDIA_MANIFEST})
            except httpx.HTTPError as e:
                raise SourceUnavailable(f"{self.name.host}: {http.describe_error(e)}") from e
            if response.status_code == 404:
                raise SourceUnavailable(f"{self.name.display} was not found at {self.name.host}")
            if response.status_code != 200:
                raise SourceUnavailable(f"{self.name.host}: manifest request answered HTTP {response.status_code}")
            raw = response.content
            try:
                manifest = Manifest.from_bytes(raw)
                for layer in manifest.blobs:
                    digest_hex(layer.digest)
            except ValueError as e:
                raise SourceUnavailable(f"{self.name.host} sent a manifest loam cannot read ({e})") from e
            for layer in manifest.blobs:
                check = validate if layer.media_type == MEDIA_MODEL else None
                self._pull_blob(session, blobs, layer, progress, check)
            progress(ProgressEvent("verifying sha256 digest"))
            return Pulled(raw, manifest)

    def _pull_blob(
        self,
        session: _Session,
        blobs: BlobStore,
        layer: Layer,
        progress: ProgressFn,
        validate: Callable[[Path], None] | None,
    ) -> None:
        status = f"pulling {short_digest(layer.digest)}"
        if blobs.has(layer.digest, layer.size):
            progress(ProgressEvent(status, layer.digest, layer.size, layer.size))
            return
        key = partial_key(layer.digest)
        waiting = lambda: progress(ProgressEvent(f"waiting for another pull of {short_digest(layer.digest)}"))  # noqa: E731
        with blobs.lock(key, on_wait=waiting):
            if blobs.has(layer.digest, layer.size):
                progress(ProgressEvent(status, layer.digest, layer.size, layer.size))
                return
            partial = blobs.partial(key, layer.size, layer.digest, parts_for(layer.size))
            try:
                url = f"{self.base}/v2/{self.name.repository}/blobs/{layer.digest}"
                http.download(
                    session.client,
                    url,
                    partial,
                    Meter(progress, status, layer.digest, layer.size),
                    session.auth_headers(),
                    note=http.note_to(progress),
                )
                try:
                    ref = partial.finish(validate)
                except DigestMismatch as e:
                    raise DigestMismatch(
                        f"{self.name.host} sent bad bytes for {short_digest(layer.digest)}: {e}"
                    ) from e
            finally:
                partial.close()
            if ref.size != layer.size:
                raise SourceUnavailable(
                    f"{short_digest(layer.digest)}: got {ref.size} bytes, manifest says {layer.size}"
                )


class _Session:
    """Requests with the registry's bearer-token handshake: on a 401, ask the
    realm named in WWW-Authenticate for a token and try again with it."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.token: str | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        response = self.client.get(url, headers={**headers, **self.auth_headers()})
        if response.status_code == 401:
            self.token = self._fetch_token(response.headers.get("www-authenticate", ""))
            response = self.client.get(url, headers={**headers, **self.auth_headers()})
        return response

    def _fetch_token(self, challenge: str) -> str:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            raise SourceUnavailable(
                f"registry asks for {scheme or 'unknown'} authentication, which loam does not speak"
            )
        fields = dict(_CHALLENGE_PARAM.findall(params))
        realm = fields.pop("realm", "")
        if not realm:
            raise SourceUnavailable("registry's authentication challenge names no realm")
        try:
            response = self.client.get(realm, params=fields)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as e:
            raise SourceUnavailable(f"registry token request failed: {http.describe_error(e)}") from e
        token = body.get("token") or body.get("access_token")
        if not token:
            raise SourceUnavailable("registry token response held no token")
        return str(token)
